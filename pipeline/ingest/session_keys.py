"""One source session id, one session: reused ids are told apart when they enter the lake.

A source's `session_id` names one session, whose events lie on its start date and the next (the
span `clickstream sequences` reads around a day). Two things break that, and both would merge two
sessions into one or give two rows one id, depending on which dates were built:
- an id reused later (events of one id more than a day apart: a counter that restarted), and
- the same id from two sources (YOOCHOOSE session `1` and a cookie log's session `1`).

So at ingest, the batch's ids are compared with each other and with the lake's (other batches):
the events of one id and source form runs of dates with gaps of at most a day, and one run, the
one already in the lake (or else the batch's earliest, by date then source), keeps the id. Every
other run is renamed `<id>@<source>:<its first date>`, which no other run can share. The choice
depends on what the lake held when the batch came; re-delivering a batch gives the same names.

Memory: the batch's distinct (session, source, date) keys, about 100 bytes each; the lake's are
read as one column, filtered to the batch's ids.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from clickstream.pipeline.core.buckets import stable_hash

KEYS = ("session_id", "source", "date")
_NEXT_RUN = pl.duration(days=1)  # a session crossing midnight has events on two dates
KEYS_PER_PART = 500_000  # the batch's keys compared at once (memory: about a bucket-day's sessions)
# keys are staged in this many files per chunk, by hash, so a part reads only its own; few, as every
# file of the batch is scanned at once to count them (polars takes a thread per file)
KEY_FILES = 8
_NONE_RENAMED = pl.DataFrame(
    schema={"session_id": pl.String, "source": pl.String, "date": pl.Date, "new_id": pl.String}
)


def session_keys(events: pl.DataFrame) -> pl.DataFrame:
    """The distinct (session_id, source, date) of `events` that carry a source session id, with each
    id's 64-bit hash (`id_hash`): the spans are grouped on it, an integer, and only the few ids it
    finds doubtful are compared as text (a collision only adds a candidate)."""
    return (
        events.lazy()
        .filter(pl.col("session_id").is_not_null())
        .select("session_id", "source", date=pl.col("ts").dt.date())
        .unique()
        .with_columns(id_hash=_id_hash())
        .collect()
    )


def _id_hash() -> pl.Expr:
    return stable_hash(pl.col("session_id"))


def stage_keys(keys: pl.DataFrame, folder: Path, name: str) -> None:
    """Spill one chunk's `session_keys` to `folder`, one Arrow file per hash file number."""
    numbered = keys.with_columns(file=(pl.col("id_hash") % KEY_FILES).cast(pl.UInt8))
    for (number,), part in numbered.partition_by("file", as_dict=True, include_key=False).items():
        part.write_ipc(folder / f"{number:02d}-{name}.arrow")


def staged_parts(folder: Path) -> list[pl.LazyFrame]:
    """The keys `stage_keys` spilled to `folder`, in parts of about KEYS_PER_PART keys: each part reads
    the files of its hash numbers alone."""
    files = sorted(folder.glob("*.arrow"))
    if not files:
        return []
    count = pl.concat([pl.scan_ipc(path, glob=False).select(pl.len()) for path in files]).sum().collect().item()
    parts = min(KEY_FILES, -(-count // KEYS_PER_PART))
    by_part: dict[int, list[Path]] = {}
    for path in files:
        by_part.setdefault(int(path.name[:2]) % parts, []).append(path)
    return [pl.concat([pl.scan_ipc(path, glob=False) for path in paths]) for paths in by_part.values()]


def renamed_sessions(batch_parts: list[pl.LazyFrame], lake_keys: pl.LazyFrame | None) -> pl.DataFrame:
    """The batch's (session_id, source, date) keys whose session takes a new id, with it (`new_id`).

    `batch_parts`: the batch's keys (`session_keys`, any repeats) in parts that no id spans
    (`staged_parts`: about `KEYS_PER_PART` keys each, so memory holds one part); `lake_keys`: the
    lake's events of other batches (at least the key columns), or None for an empty lake (read
    once a part)."""
    renamed = [_renamed_part(part, lake_keys) for part in batch_parts]
    return pl.concat([_NONE_RENAMED, *renamed]).sort(KEYS)


def _renamed_part(batch_keys: pl.LazyFrame, lake_keys: pl.LazyFrame | None) -> pl.DataFrame:
    ours = batch_keys.select(*KEYS, "id_hash").with_columns(in_lake=pl.lit(False))
    if lake_keys is not None:
        hashes = ours.select("id_hash").unique()
        theirs = lake_keys.select(KEYS).with_columns(id_hash=_id_hash()).join(hashes, on="id_hash", how="semi")
        ours = pl.concat([ours, theirs.unique().with_columns(in_lake=pl.lit(True))])
    spans = ours.group_by("id_hash").agg(
        first=pl.col("date").min(), last=pl.col("date").max(), mixed=pl.col("source").min() != pl.col("source").max()
    )
    doubtful = spans.filter((pl.col("last") - pl.col("first") > _NEXT_RUN) | pl.col("mixed"))
    keys = ours.join(doubtful.select("id_hash"), on="id_hash", how="semi").drop("id_hash").collect()
    if keys.is_empty():
        return _NONE_RENAMED
    runs = (
        keys.group_by(KEYS)
        .agg(pl.col("in_lake").any())
        .sort(KEYS)
        .with_columns(
            run=((pl.col("date").diff() > _NEXT_RUN) | (pl.col("source") != pl.col("source").shift()))
            .fill_null(True)
            .cum_sum()
            .over("session_id")
        )
    )
    run_facts = runs.group_by("session_id", "run").agg(
        start=pl.col("date").min(), source=pl.col("source").first(), in_lake=pl.col("in_lake").any()
    )
    keeper = run_facts.sort("in_lake", "start", "source", descending=[True, False, False]).unique(
        "session_id", keep="first", maintain_order=True
    )
    return (
        runs.filter(~pl.col("in_lake"))
        .join(keeper.select("session_id", keep=pl.col("run")), on="session_id")
        .filter(pl.col("run") != pl.col("keep"))
        .join(run_facts.select("session_id", "run", "start"), on=["session_id", "run"])
        .select(*KEYS, new_id=pl.format("{}@{}:{}", "session_id", "source", pl.col("start").dt.to_string()))
    )


def rename_sessions(events: pl.DataFrame, renamed: pl.DataFrame) -> pl.DataFrame:
    """`events` (of one date, with columns session_id and source) with the new ids of `renamed`
    (`renamed_sessions`' rows of that date)."""
    keys = ["session_id", "source"]
    new_ids = events.select(keys).join(renamed.select(*keys, "new_id"), on=keys, how="left", maintain_order="left")
    return events.with_columns(session_id=new_ids.get_column("new_id").fill_null(events.get_column("session_id")))
