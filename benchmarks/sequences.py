"""events/ -> sequences/ and Parquet -> tensors at YOOCHOOSE scale, against the same step written
the plain polars way, in DuckDB, and in pandas, on the same lake, back to back.

    python -m benchmarks.sequences [--sessions 9250000] [--days 183] [--pandas-days 3] [--quick]

Generates (once, cached under benchmarks/data/) a YOOCHOOSE-like events/ lake with a
vectorised numpy generator: 9.25M sessions, ~33M clicks, 5.5% buying sessions, Zipf item
popularity, categories of every kind. Each timed step runs in its own process so that its
peak memory and CPU-seconds are its own. Peers over every date: plain polars (sort, `diff().over`,
`group_by().agg(list)`) and DuckDB (window `lag`/`lead`, `list()` aggregates, `COPY ... PARTITION_BY`),
both writing per-day Parquet; pandas (sort, groupby().apply(list)) on the first `--pandas-days` days
only, against the build on the same days. Target: at least 3x fewer CPU-seconds than each peer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np

from benchmarks.results import Ratio, record

DATA = Path(__file__).with_name("data")
START = dt.date(2014, 4, 1)


def generate_events_lake(root: Path, sessions: int, days: int, seed: int = 0) -> int:
    """Write a YOOCHOOSE-like events/ lake under `root`; returns the number of events."""
    import polars as pl

    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.schemas import EVENTS, conform

    rng = np.random.default_rng(seed)
    lengths = rng.geometric(0.28, sessions)  # mean ~3.6 clicks, like YOOCHOOSE
    long = rng.random(sessions) < 0.001  # a few very long sessions exercise truncation
    lengths[long] += rng.integers(150, 400, int(long.sum()))
    n = int(lengths.sum())
    session = np.repeat(np.arange(sessions), lengths)
    first = np.cumsum(lengths) - lengths
    start = (rng.integers(0, days, sessions) * 86_400 + rng.integers(0, 86_400, sessions)) * 10**6
    seconds = np.cumsum(rng.exponential(90.0, n))
    offset_us = ((seconds - seconds[first][session]) * 1e6).astype(np.int64)
    epoch_us = (START - dt.date(1970, 1, 1)).days * 86_400 * 10**6
    ts = epoch_us + start[session] + offset_us

    n_items = 52_739
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item = rng.choice(n_items, n, p=popularity / popularity.sum())
    brands = (10**7 + rng.integers(0, 9 * 10**9, 300)).astype(str)
    kinds = np.array(["0", *map(str, range(1, 13)), "S"])
    category_of_item = np.where(
        rng.random(n_items) < 0.9,
        kinds[rng.choice(14, n_items, p=[0.6, *[0.025] * 12, 0.1])],
        brands[rng.integers(0, 300, n_items)],
    )
    buyer = np.flatnonzero(rng.random(sessions) < 0.055)
    last = first[buyer] + lengths[buyer] - 1

    def frame(sessions_: np.ndarray, ts_: np.ndarray, items: np.ndarray, kind: str) -> pl.DataFrame:
        purchase = kind == "purchase"
        columns = pl.DataFrame(
            {
                "session_id": pl.Series(sessions_ + 1).cast(pl.String),
                "ts": pl.Series(ts_).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
                "event_type": kind,
                "item_id": pl.Series(items + 214_500_000).cast(pl.String),
                "category": None if purchase else pl.Series(category_of_item).gather(items),
                "price": pl.Series(rng.integers(100, 10_000, items.size).astype(float)) if purchase else None,
                "quantity": pl.Series(np.ones(items.size, dtype=np.int32)) if purchase else None,
                "cookie_id": None,
                "source": "yoochoose",
                "labelled": True,
            }
        )
        return conform(columns, EVENTS)

    events = pl.concat(
        [frame(session, ts, item, "view"), frame(buyer, ts[last] + 60 * 10**6, item[last], "purchase")]
    )
    dated = events.with_columns(batch=pl.lit("0"), date=pl.col("ts").dt.date()).sort("date", "session_id", "ts")
    Lake(root).commit("events", dated, replace=None, stage="benchmark")
    return events.height


def _time_build(root: str, start: dt.date | None, end: dt.date | None, queue: SimpleQueue) -> None:
    from clickstream.features.sequences import build_sequences
    from clickstream.pipeline.core.config import load_settings

    began, cpu = time.perf_counter(), os.times()
    summary = build_sequences(load_settings(lake=root, home=Path(root) / "state"), start, end)
    queue.put((time.perf_counter() - began, _cpu_since(cpu), str(summary)))


def _cpu_since(start: os.times_result) -> tuple[float, float]:
    """(user, system) CPU seconds of this process's threads since `start`. System time here is
    mostly page faults: the first touch of fresh memory, costly on a virtual machine."""
    now = os.times()
    return now.user - start.user, now.system - start.system


def _time_tensors(root: str, out_of_fold: bool, queue: SimpleQueue) -> None:
    """read_sequences of the columns load_tensors reads, build_vocabulary on all of it, load_tensors."""
    from clickstream.features.sequences import read_sequences
    from clickstream.features.tensor_loader import TENSOR_COLUMNS, load_tensors
    from clickstream.features.vocabulary import build_vocabulary
    from clickstream.pipeline.core.config import SequenceConfig
    from clickstream.pipeline.core.lake import Lake

    lake = Lake(root)
    began, cpu = time.perf_counter(), os.times()
    sequences = read_sequences(lake, None, None, TENSOR_COLUMNS)
    read_s, read_cpu = time.perf_counter() - began, _cpu_since(cpu)
    began = time.perf_counter()
    vocabulary = build_vocabulary(sequences, SequenceConfig())
    vocabulary_s = time.perf_counter() - began
    began, cpu = time.perf_counter(), os.times()
    tensors = load_tensors(sequences, vocabulary, out_of_fold=out_of_fold)
    load_s, load_cpu = time.perf_counter() - began, _cpu_since(cpu)
    cpu_s = (read_cpu[0] + load_cpu[0], read_cpu[1] + load_cpu[1])
    queue.put((read_s, load_s, cpu_s, vocabulary_s, int(tensors.offsets[-1])))


def _cpu(seconds: tuple[float, float]) -> str:
    return f"{seconds[0]:.0f} + {seconds[1]:.0f}"


def _generate(root: str, sessions: int, days: int, queue: SimpleQueue) -> None:
    queue.put(generate_events_lake(Path(root), sessions, days))


def _time_pandas(root: str, start: dt.date, end: dt.date, queue: SimpleQueue) -> None:
    """The same step written the plain pandas way: sort, groupby().apply(list) per column."""
    import pandas as pd

    from clickstream.pipeline.core.lake import Lake

    lake = Lake(root)
    began = time.perf_counter()
    paths = lake.files("events", start - dt.timedelta(days=1), end + dt.timedelta(days=1))
    events = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    events = events.sort_values(["session_id", "ts", "event_type", "item_id"])
    grouped = events.groupby("session_id", sort=False)
    sessions = grouped["ts"].agg(["min", "max", "size"])
    sessions["label"] = grouped["event_type"].apply(lambda types: (types == "purchase").any())
    views = events[events["event_type"] != "purchase"].copy()
    seconds = views.groupby("session_id", sort=False)["ts"].diff().dt.total_seconds()
    views["log_gap_prev"] = np.log1p(seconds.fillna(0.0))
    views["log_dwell"] = np.log1p(-views.groupby("session_id", sort=False)["ts"].diff(-1).dt.total_seconds())
    by_session = views.groupby("session_id", sort=False)
    for column in ("item_id", "category", "event_type", "log_gap_prev", "log_dwell"):
        sessions[column] = by_session[column].apply(list)
    sessions = sessions[(sessions["min"].dt.date >= start) & (sessions["min"].dt.date <= end)].dropna()
    sessions = sessions.reset_index().sort_values(["min", "session_id"])
    for day, part in sessions.groupby(sessions["min"].dt.date):
        part.to_parquet(Path(root) / f"pandas-{day}.parquet")
    queue.put((time.perf_counter() - began, len(sessions)))


def _time_plain_polars(root: str, queue: SimpleQueue) -> None:
    """The same step as anyone first writes it in polars: sort, `diff().over`, `group_by().agg(list)`."""
    import polars as pl

    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.schemas import EVENT_TYPE_CODE

    began, cpu = time.perf_counter(), os.times()
    events = pl.read_parquet(Lake(root).files("events")).sort("session_id", "ts")
    outcome = events.group_by("session_id").agg(
        pl.col("ts").min().alias("session_start"),
        pl.col("ts").max().alias("session_end"),
        pl.len().alias("n_events_total"),
        (pl.col("event_type") == "purchase").any().alias("label"),
    )
    seconds = pl.col("ts").diff().over("session_id").dt.total_microseconds() / 1e6
    after = pl.col("ts").diff(-1).over("session_id").dt.total_microseconds() / -1e6
    sessions = (
        events.filter(pl.col("event_type") != "purchase")
        .with_columns(
            seconds.fill_null(0).log1p().cast(pl.Float32).alias("log_gap_prev"),
            after.fill_null(0).log1p().cast(pl.Float32).alias("log_dwell"),
            after.is_not_null().alias("dwell_known"),
            pl.col("event_type").replace_strict(EVENT_TYPE_CODE, return_dtype=pl.Int8),
        )
        .group_by("session_id")
        .agg(pl.len().alias("n_events"), *_PEER_LISTS)
        .join(outcome, on="session_id")
        .with_columns(pl.col("session_start").dt.date().alias("date"))
        .sort("session_start", "session_id")
    )
    for (day,), part in sessions.group_by("date"):
        part.drop("date").write_parquet(Path(root) / "peer-polars" / f"date={day}" / "data.parquet", mkdir=True)
    queue.put((time.perf_counter() - began, _cpu_since(cpu), sessions.height))


_PEER_HOW = {
    "plain polars": "sort + `diff().over` + `group_by().agg(list)`",
    "DuckDB": "window `lag`/`lead` + `list()` aggregates",
}
_PEER_LISTS = ("item_id", "category", "event_type", "log_gap_prev", "log_dwell", "dwell_known")


def _time_duckdb(root: str, queue: SimpleQueue) -> None:
    """The same step in DuckDB SQL: window lag/lead for gaps and dwells, list() aggregates."""
    import duckdb

    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.schemas import EVENT_TYPE_CODE

    began, cpu = time.perf_counter(), os.times()
    files = ", ".join(f"'{path}'" for path in Lake(root).files("events"))
    out = Path(root) / "peer-duckdb"
    lists = ", ".join(f"list({c} ORDER BY ts) AS {c}" for c in _PEER_LISTS)
    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.environ.get('POLARS_MAX_THREADS', os.cpu_count())}")
    connection.execute(f"""
        COPY (
            WITH events AS (SELECT * FROM read_parquet([{files}])),
            outcome AS (
                SELECT session_id, min(ts) AS session_start, max(ts) AS session_end, count(*) AS n_events_total,
                       bool_or(event_type = 'purchase') AS label
                FROM events GROUP BY session_id
            ),
            inputs AS (
                SELECT session_id, ts, item_id, category,
                       CASE event_type {" ".join(f"WHEN '{k}' THEN {v}" for k, v in EVENT_TYPE_CODE.items())}
                       END::TINYINT AS event_type,
                       ln(1 + coalesce(epoch(ts) - epoch(lag(ts) OVER w), 0))::FLOAT AS log_gap_prev,
                       ln(1 + coalesce(epoch(lead(ts) OVER w) - epoch(ts), 0))::FLOAT AS log_dwell,
                       lead(ts) OVER w IS NOT NULL AS dwell_known
                FROM events WHERE event_type <> 'purchase'
                WINDOW w AS (PARTITION BY session_id ORDER BY ts)
            )
            SELECT o.*, CAST(o.session_start AS DATE) AS date, count(*) AS n_events, {lists}
            FROM inputs JOIN outcome o USING (session_id)
            GROUP BY ALL ORDER BY o.session_start, o.session_id
        ) TO '{out}' (FORMAT parquet, PARTITION_BY (date), OVERWRITE_OR_IGNORE)
    """)
    sessions = connection.execute(f"SELECT count(*) FROM read_parquet('{out}/*/*.parquet')").fetchone()[0]
    queue.put((time.perf_counter() - began, _cpu_since(cpu), sessions))


def _in_child(target: Callable[..., None], *args: object) -> tuple[Any, float]:
    """Run target(*args, queue) in a fresh process; its result and its own peak RSS in GiB."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measured, args=(target, *args, queue))
    process.start()
    result, peak = queue.get()
    process.join()
    return result, peak


def _measured(target: Callable[..., None], *args: Any) -> None:
    """In the child: run target, then report its result with this process's peak RSS."""
    import resource

    *arguments, out = args
    inner: SimpleQueue = SimpleQueue()
    target(*arguments, inner)
    out.put((inner.get(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=9_250_000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--pandas-days", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="Print the figures only.")
    parser.add_argument("--quick", action="store_true", help="300k sessions over 10 days (RESULTS-quick.md)")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.days, args.pandas_days = 300_000, 10, 1

    root = DATA / f"yoochoose-{args.sessions}-{args.days}d"
    if not (root / "events").exists():  # in a child too: its memory must not count as a timed step's peak
        began = time.perf_counter()
        n, _ = _in_child(_generate, str(root), args.sessions, args.days)
        print(f"generated {n:,} events in {time.perf_counter() - began:.0f} s under {root}")
    threads = os.environ.get("POLARS_MAX_THREADS", str(os.cpu_count()))
    load_before = os.getloadavg()[0]

    (build_s, build_cpu, summary), build_peak = _in_child(_time_build, str(root), None, None)
    print(f"build: {build_s:.1f} s ({_cpu(build_cpu)} CPU s), peak {build_peak:.2f} GiB: {summary}")
    tensors = {}
    for out_of_fold in (False, True):
        (read_s, load_s, cpu_s, vocabulary_s, n_events), peak = _in_child(_time_tensors, str(root), out_of_fold)
        tensors[out_of_fold] = (read_s, load_s, cpu_s, peak)
        print(
            f"tensors (out_of_fold={out_of_fold}): read {read_s:.1f} s + load {load_s:.1f} s ({_cpu(cpu_s)} CPU s), "
            f"peak {peak:.2f} GiB; build_vocabulary {vocabulary_s:.1f} s"
        )

    peers = {}
    for name, target in (("plain polars", _time_plain_polars), ("DuckDB", _time_duckdb)):
        (peer_s, peer_cpu, peer_sessions), peer_peak = _in_child(target, str(root))
        peers[name] = (peer_s, peer_cpu, peer_sessions, peer_peak)
        print(f"{name}: {peer_s:.1f} s ({_cpu(peer_cpu)} CPU s), peak {peer_peak:.2f} GiB, {peer_sessions:,} sessions")

    first, last = START, START + dt.timedelta(days=args.pandas_days - 1)
    (subset_s, _, _), _ = _in_child(_time_build, str(root), first, last)
    (pandas_s, pandas_sessions), _ = _in_child(_time_pandas, str(root), first, last)
    ratio = pandas_s / subset_s
    print(f"first {args.pandas_days} days: polars {subset_s:.1f} s, pandas {pandas_s:.1f} s ({ratio:.1f}x)")
    load = os.getloadavg()[0]
    ours_cpu = sum(build_cpu)
    ratios = [
        Ratio("events -> sequences, all dates", f"{name} ({_PEER_HOW[name]})",
              f"{ours_cpu:.1f} CPU-s, {build_peak:.1f} GiB", f"{sum(cpu):.1f} CPU-s, {peak:.1f} GiB",
              sum(cpu) / ours_cpu, 3.0)
        for name, (_, cpu, _, peak) in peers.items()
    ]
    peer_rows = "\n".join(
        f"| {name}: {_PEER_HOW[name]}, all dates ({n:,} sessions) | {wall:.1f} s | {_cpu(cpu)} s | {peak:.2f} GiB "
        f"| **{sum(cpu) / ours_cpu:.1f}x** our CPU-s (target >= 3x) |"
        for name, (wall, cpu, n, peak) in peers.items()
    )
    rows = "\n".join(
        f"| sequences/ -> SequenceTensors, {name} (read {read_s:.1f} s + load {load_s:.1f} s) "
        f"| {read_s + load_s:.1f} s | {_cpu(cpu_s)} s | {peak:.2f} GiB | <= 5 s |"
        for (read_s, load_s, cpu_s, peak), name in zip(
            tensors.values(), ("plain (validation, scoring)", "out_of_fold=True (training)"), strict=True
        )
    )

    body = f"""
Synthetic YOOCHOOSE-scale events/ lake ({args.sessions:,} sessions, {n_events:,} input events over {args.days}
days, generated by `benchmarks/sequences.py`), POLARS_MAX_THREADS={threads}; each step in a fresh process.
Wall time and the CPU seconds of all its threads, user + system (on an idle 2-core machine, wall >= CPU / 2;
system time is mostly page faults: this virtual machine touches a process's first ~3 GB of fresh memory at
~0.3 CPU s/GB and any more at ~3 CPU s/GB, so it varies from run to run). Load average
when it began: {load_before:.1f}, when it ended: {load:.1f}. The tensor load reads the columns it uses
(`features.tensor_loader.TENSOR_COLUMNS`).

| step | wall | CPU | peak RSS | target |
|---|---|---|---|---|
| events/ -> sequences/ (all dates) | {build_s:.1f} s | {_cpu(build_cpu)} s | {build_peak:.2f} GiB | <= 30 s, <= 6 GB |
{peer_rows}
{rows}
| build_vocabulary on the whole window (not in the load) | {vocabulary_s:.1f} s | | | |
| pandas groupby().apply(list), first {args.pandas_days} days ({pandas_sessions:,} sessions) | {pandas_s:.1f} s \
| | | |
| clickstream, the same {args.pandas_days} days | {subset_s:.1f} s | | | |
| speed-up over pandas (same run, same days) | **{ratio:.1f}x** | | | >= 10x |

How the work differs (from the code of each, not yet a profile of each): the build sorts each batch's
flat event table once by (session, ts) and treats sessions as runs of it, building list columns from
offsets, in batches of at most 4M events (that bounds memory); the plain polars pipeline runs a hash
group-by for the outcome, two windowed `diff().over` passes and a second hash group-by building the
lists over the whole table at once; DuckDB's windows partition and sort again, and `list()` with
`ORDER BY` buffers every group.

Build summary: `{summary}`

pandas on all {args.days} days would take about {pandas_s * args.days / args.pandas_days:.0f} s (extrapolated
linearly from the {args.pandas_days} days; not run).
"""
    if args.no_record:
        print(body)
    else:
        record("sequences", body, ratios, quick=args.quick)


if __name__ == "__main__":
    main()
