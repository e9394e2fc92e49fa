"""Time `clickstream ingest` on YOOCHOOSE-scale logs and record it in RESULTS.md.

    python -m benchmarks.ingest [--sessions 9250000] [--days 183]

Generates the logs once (in a child process, under benchmarks/data/ingest-<sessions>/, kept
for later runs), then ingests clicks and buys into a fresh lake in this process and reports
wall time, CPU time, throughput and this process's peak memory (target: 60 s, 4 GB, 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).with_name("data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=9_250_000)
    parser.add_argument("--days", type=int, default=183)
    args = parser.parse_args()

    from benchmarks.results import record
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.ingest.ingest import ingest_files
    from clickstream.pipeline.synthetic.generate import BUYS_FILE, CLICKS_FILE

    logs = DATA / f"ingest-{args.sessions}"
    clicks, buys = logs / CLICKS_FILE, logs / BUYS_FILE
    if not clicks.exists():
        command = [sys.executable, "-m", "clickstream.pipeline.orchestrate.cli", "generate", str(logs)]
        options = ["--sessions", str(args.sessions), "--days", str(args.days), "--start-date", "2014-04-01"]
        subprocess.run([*command, *options], check=True)
    work = DATA / "ingest-lake"
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(lake=str(work / "lake"), home=work / "state")

    cpu0, began = time.process_time(), time.perf_counter()
    summary = ingest_files(settings, "yoochoose", [clicks], [buys], ingestion_date=dt.date(2015, 1, 1))
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size_gb = (clicks.stat().st_size + buys.stat().st_size) / 2**30
    load = os.getloadavg()[0]
    print(summary)
    record(
        "ingest",
        f"""`python -m benchmarks.ingest --sessions {args.sessions:,} --days {args.days}` (clicks + buys, plain CSV)

| input | rows read | rows written | wall | CPU (user+sys) | rows/s | peak memory |
|---|---|---|---|---|---|---|
| {size_gb:.2f} GiB | {summary.rows_read:,} | {summary.rows_written:,} | {seconds:.1f} s | {cpu:.1f} s | \
{summary.rows_read / seconds:,.0f} | {peak_gb:.2f} GiB |

Target: at most 60 s and 4 GB on 2 cores. Load average when it finished: {load:.1f} \
(other work on the machine slows the wall time; CPU time is the steadier figure).""",
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
