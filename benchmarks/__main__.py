"""Run every benchmark in data-flow order, each in its own process (so peak memory is its own).

    python -m benchmarks            # all of them, full scale (about 15 minutes on 2 cores)
    python -m benchmarks.ingest     # one of them; see each module's --help
"""

from __future__ import annotations

import subprocess
import sys

ORDER = ("generate", "ingest", "sequences", "train_throughput", "scoring", "quality")


def main() -> int:
    failed = []
    for name in ORDER:
        print(f"== benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *sys.argv[1:]]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
