"""Run every benchmark in data-flow order, each in its own process (so peak memory is its own).

    python -m benchmarks            # all of them, full scale (about an hour on 2 cores)
    python -m benchmarks --quick    # all of them at reduced scale (a few minutes), into RESULTS-quick.md
    python -m benchmarks.ingest     # one of them; see each module's --help

Other flags are passed to every benchmark. The demo runs last: its wall time is the figure most
sensitive to other work on the machine.
"""

from __future__ import annotations

import subprocess
import sys
import time

ORDER = ("generate", "ingest", "sequences", "train_throughput", "scoring", "quality", "reads", "demo")


def _knows_quick(name: str) -> bool:
    """Whether benchmarks.NAME takes --quick (one that does not would record a reduced run as full)."""
    usage = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], capture_output=True, text=True)
    return "--quick" in usage.stdout


def main() -> int:
    args = sys.argv[1:]
    quick = "--quick" in args
    failed = []
    began = time.perf_counter()
    for name in ORDER:
        if quick and not _knows_quick(name):
            print(f"== benchmarks.{name}: skipped, it has no --quick", flush=True)
            continue
        print(f"== benchmarks.{name} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args]).returncode != 0:
            failed.append(name)
    print(f"all benchmarks in {time.perf_counter() - began:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
