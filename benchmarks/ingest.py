"""Measure `clickstream ingest` (CPU time and peak memory) against a plain polars parse of the
same files, and on hostile inputs, and record it in RESULTS.md.

    python -m benchmarks.ingest [--sessions 9250000] [--days 183] [--quick]

`--quick`: 300,000 sessions over 10 days, recorded in RESULTS-quick.md (the full-scale figures stay).

Generates the YOOCHOOSE-scale logs once (under benchmarks/data/ingest-<sessions>/, kept for later
runs). Every measured job runs in its own child process, started by a wrapper process that reports
the child's `resource.getrusage(RUSAGE_CHILDREN)`: user+system CPU seconds (all threads) and peak
RSS. Jobs: the polars peer (`pl.read_csv` with the schema, ids as text, then the timestamp parsed),
DuckDB's CSV -> Parquet when duckdb is installed, the ingest of clicks + buys, 32 MiB of bad lines,
and a gzip bomb (1 MiB of gzip holding 1 GiB of newlines).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).with_name("data")
CLICK_FIELDS = ("session_id", "timestamp", "item_id", "category")
BUY_FIELDS = ("session_id", "timestamp", "item_id", "price", "quantity")
TARGET_RSS_GIB, TARGET_RATIO = 1.0, 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=9_250_000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--wrap", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--job", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="300k sessions over 10 days (RESULTS-quick.md)")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.days = 300_000, 10
    if args.wrap is not None:
        return _wrap(args.wrap)
    if args.job is not None:
        return _job(*args.job)

    from benchmarks.results import Ratio, record
    from clickstream.pipeline.synthetic.generate import BUYS_FILE, CLICKS_FILE

    logs = DATA / f"ingest-{args.sessions}"
    clicks, buys = logs / CLICKS_FILE, logs / BUYS_FILE
    if not clicks.exists():
        command = [sys.executable, "-m", "clickstream.pipeline.orchestrate.cli", "generate", str(logs)]
        options = ["--sessions", str(args.sessions), "--days", str(args.days), "--start-date", "2014-04-01"]
        subprocess.run([*command, *options], check=True)
    bad, bomb = _bad_lines(DATA / "bad-lines-32mib.dat"), _gzip_bomb(DATA / "bomb-1gib-newlines.dat.gz")
    size_gib = (clicks.stat().st_size + buys.stat().st_size) / 2**30

    runs = {"polars read_csv + timestamp parse": _measure("polars", clicks, buys)}
    if importlib.util.find_spec("duckdb"):
        runs["DuckDB CSV -> Parquet"] = _measure("duckdb", clicks, buys)
    runs["clickstream ingest"] = ingest = _measure("ingest", clicks, buys)
    hostile = {
        f"32 MiB of bad lines ({bad.stat().st_size / 2**20:.0f} MiB file)": _measure("ingest", bad),
        f"gzip bomb: {bomb.stat().st_size / 2**20:.1f} MiB of gzip, 1 GiB of newlines": _measure("ingest", bomb),
    }
    peer = runs["polars read_csv + timestamp parse"]
    ratio = ingest["cpu"] / peer["cpu"]
    rows = "\n".join(_row(name, run, peer) for name, run in runs.items())
    hostile_rows = "\n".join(_row(name, run) for name, run in hostile.items())
    peak = max(run["rss_gib"] for run in [ingest, *hostile.values()])
    ratios = [
        Ratio(
            "ingest (validation, quarantine, dedup, date partitions)",
            name,
            f"{ingest['cpu']:.1f} CPU-s, {ingest['rss_gib']:.2f} GiB",
            f"{run['cpu']:.1f} CPU-s, {run['rss_gib']:.2f} GiB",
            run["cpu"] / ingest["cpu"],
            round(1 / TARGET_RATIO, 2) if run is peer else None,
        )
        for name, run in runs.items()
        if run is not ingest
    ]
    record(
        "ingest",
        f"""`python -m benchmarks.ingest --sessions {args.sessions:,} --days {args.days}`: YOOCHOOSE clicks + buys,
{size_gib:.2f} GiB of plain CSV. Each job is its own process; CPU = user + system seconds of all its threads,
peak = its maximum RSS (`getrusage(RUSAGE_CHILDREN)` in a wrapper process). Load average at the end:
{os.getloadavg()[0]:.1f} (the 2 cores are shared, so wall times are long; CPU time is the steadier figure).

| job (same two files) | outcome | wall | CPU | CPU / polars | peak RSS |
|---|---|---|---|---|---|
{rows}

| hostile input | outcome | wall | CPU | | peak RSS |
|---|---|---|---|---|---|
{hostile_rows}

Targets: ingest CPU at most {TARGET_RATIO}x the polars parse: **{ratio:.2f}x, {_met(ratio <= TARGET_RATIO)}**;
peak RSS at most {TARGET_RSS_GIB:.0f} GiB for every ingest: **{peak:.2f} GiB at most, {_met(peak <= TARGET_RSS_GIB)}**.

Where the ingest's CPU goes: process time of the stage functions, each wrapped with a timer, in one ingest of
a 170 MB slice (150 MB of clicks, 20 MB of buys: 3.34M events over 75 dates), before and after this round of
changes, two runs each alternated at load 10-11: 5.6-5.7 -> 3.9-4.5 CPU-s inside `ingest_files` (the whole
process, imports included: 5.8-6.5 -> 4.7-4.8, against 1.7-1.8 for the polars parse; same lake rows, also
on a slice salted with bad rows, duplicates and CRLF lines). Timestamps: validation 1.5 -> 0.7-0.8 s, as
polars' `to_datetime` (0.62 CPU-s per 2M texts, the strict format and `cache=False` saved 15% at most) gave
way to the fixed-width digits of `2014-04-07T10:51:09.277Z` read with numpy (0.22 s per 2M; other texts
still go to `to_datetime`). The final write: 1.18 -> 0.93-0.98 s with zstd level 1 for events (11% more
bytes; level 3, the default, 0.87-0.96 s per 3M events in isolation, level 1 0.68-0.84, lz4 0.63 with 50%
more bytes, pyarrow's writer no faster). Line cutting (block joins, newline count and scan, the mask
built for chunks without rejects, NUL and non-ASCII scans): ~0.45 -> ~0.13 s, one copy and one newline
scan per block, byte searches before scans. Staging: ~0.8 -> ~0.7 s, only the columns that vary within a
chunk are staged (in isolation 0.6-0.77 -> 0.38 s per 3M events). Sort: 0.49-0.53 -> 0.37-0.40 s, one
thread per date (0.021 -> 0.013 s for 190k events); filters of chunks without bad rows and dates without
duplicates (0.11-0.13 s) are skipped. Left after the change, largest first: the zstd write (~0.95 s), the
staging round trip (~0.7 s), the CSV field split (polars `read_csv`, ~0.45 s, which the peer pays too),
timestamps (~0.4 s), the per-date sort (~0.4 s), the checks (~0.25 s, three regexes per row) and the byte
scans (~0.2 s): the work beyond the peer's parse is validation, staging for bounded memory, sort, dedup
and the compressed write.

At full scale (py-spy at 50 Hz on the main thread, load 1, 21 s of samples; polars' own threads, where
the Parquet encoding runs, are not in them): staging 50% (line cutting 23%, the field split 19%,
timestamps 20%), the per-date sort 17%, the rest the reads and writes of the staged dates. Line cutting
alone over the 1.68 GB clicks file took 4.8 CPU-s: the read 1.4 s, and 2.5 s for two copies of every
32 MiB block (`carry + block[:end]`; fresh memory costs this virtual machine about 0.75 CPU-s per GB
touched), now one copy (3.9 CPU-s). Sorting one date's 190k events on the 8 keys of the output order
costs 0.05 CPU-s when shuffled, 0.035 s of it for `session_id`, a string. Why 1.5x is out of reach
with this design: the parts the peer does not do (the compressed write ~9 s, the staging round trip
~7 s, the sort ~4 s, the checks ~2.5 s at full scale) add up to more than the 10 CPU-s the target
leaves beyond the parse itself; meeting it needs a different design (a DuckDB-based reader and writer
beside the quarantine, or no staging when a batch fits in memory), not a faster step.""",
        ratios,
        quick=args.quick,
    )


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _measure(kind: str, *files: Path) -> dict:
    """Run one job in a child process (through a wrapper that reports the child's rusage)."""
    began = time.perf_counter()
    wrapper = [sys.executable, "-m", "benchmarks.ingest", "--wrap", kind, *map(str, files)]
    result = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(kind, [f.name for f in files], report, flush=True)
    return {**report, "wall": time.perf_counter() - began}


def _wrap(job: list[str]) -> None:
    child = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--job", *job], capture_output=True, text=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = (child.stdout + child.stderr).strip().splitlines() or ["(no output)"]
    cpu, peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20
    print(json.dumps({"cpu": cpu, "rss_gib": peak, "outcome": lines[-1]}))


def _job(kind: str, *names: str) -> None:
    files = [Path(name) for name in names]
    if kind == "polars":
        import polars as pl

        rows = 0
        for path, fields in zip(files, (CLICK_FIELDS, BUY_FIELDS), strict=False):
            frame = pl.read_csv(path, has_header=False, schema=dict.fromkeys(fields, pl.String))
            frame = frame.with_columns(
                pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC")
            )
            rows += frame.height
        print(f"{rows:,} rows parsed from {len(files)} file(s), all in memory")
    elif kind == "duckdb":
        import duckdb

        out = DATA / "duckdb-out"
        out.mkdir(exist_ok=True)
        for path in files:
            duckdb.sql(f"COPY (SELECT * FROM read_csv('{path}', header=false)) TO '{out / path.stem}.parquet'")
        shutil.rmtree(out)
        print(f"{len(files)} file(s) copied to Parquet")
    else:  # `clickstream ingest`, as users run it (its allocator setting included)
        from clickstream.pipeline.orchestrate.cli import main

        work = DATA / f"ingest-lake-{os.getpid()}"
        os.environ["CLICKSTREAM_HOME"] = str(work / "state")
        buys = [arg for path in files[1:] for arg in ("--buys", str(path))]
        lake = ["--lake", str(work / "lake")]
        sys.argv = ["clickstream", "ingest", "--format", "yoochoose", *lake, str(files[0]), *buys]
        try:
            main()
        except SystemExit:  # a refused input: the one-line error is on stderr
            pass
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _row(name: str, run: dict, peer: dict | None = None) -> str:
    ratio = f"{run['cpu'] / peer['cpu']:.2f}x" if peer else ""
    outcome = run["outcome"].replace("|", "/")[:160]
    return f"| {name} | {outcome} | {run['wall']:.0f} s | {run['cpu']:.1f} s | {ratio} | {run['rss_gib']:.2f} GiB |"


def _bad_lines(path: Path) -> Path:
    """32 MiB of lines every reader rejects (wrong field counts, bad bytes, bad values), and a few good."""
    if not path.exists():
        kinds = [b"x,y\n", b"1,2014-04-07T10:51:09.277Z,caf\xe9,0\n", b"1,yesterday,5,0\n", b"\n", b"-1,2,3,4,5,6\n"]
        block = b"".join(kinds * 4096)
        with path.open("wb") as out:
            for _ in range(-(-(32 << 20) // len(block))):
                out.write(block)
            out.write(b"1,2014-04-07T10:51:09.277Z,214536502,0\n")
    return path


def _gzip_bomb(path: Path) -> Path:
    if not path.exists():
        with gzip.open(path, "wb", compresslevel=9) as out:
            for _ in range(1024):
                out.write(b"\n" * (1 << 20))
    return path


if __name__ == "__main__":
    main()
