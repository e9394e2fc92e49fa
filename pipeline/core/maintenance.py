"""Operating the lake's Delta tables: history, restore, vacuum, compaction and the one-time
migrations of a lake written before the tables were Delta tables, or before session buckets
(`clickstream lake ...`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

import polars as pl
import pyarrow as pa

from clickstream.pipeline.core.errors import ClickstreamError, LakeFormatError
from clickstream.pipeline.core.lake import (
    BUCKETED,
    MIGRATE,
    OLD_DATE,
    OLD_PART,
    RETENTION_HOURS,
    TABLE_SCHEMAS,
    TABLES,
    ZSTD_DEFAULT,
    ZSTD_LEVELS,
    Lake,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable

# What to rebuild after a table's content changes under its readers: the command, and how far
# around a changed date its output moves (a session holds events of the day before and after).
REBUILD = {
    "events": ("clickstream sequences", 1),
    "sequences": ("clickstream score", 0),
    "scores": ("clickstream score", 0),  # rewrites cookie_intent from every scored day
}


def history(lake: Lake, table: str) -> pl.DataFrame:
    """The table's versions, newest first: when, what operation, which stage and batch, rows added."""
    rows = [
        {
            "version": c.version,
            "timestamp": c.timestamp,
            "operation": c.operation,
            "stage": c.stage,
            "batch": c.batch,
            "rows": c.rows,
            "code_version": c.metadata.get("code_version", ""),
        }
        for c in lake.history(table)
    ]
    schema = {
        "version": pl.Int64,
        "timestamp": pl.Datetime("ms", "UTC"),
        "operation": pl.String,
        "stage": pl.String,
        "batch": pl.String,
        "rows": pl.Int64,
        "code_version": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore changed, and what to rebuild downstream."""

    table: str
    restored_to: int
    new_version: int
    changed: tuple[dt.date, ...]

    def __str__(self) -> str:
        text = f"restored {self.table} to version {self.restored_to} as version {self.new_version}"
        if not self.changed:
            return f"{text}: no date changed"
        text += f": {len(self.changed)} date(s) changed ({self.changed[0]}..{self.changed[-1]})"
        if self.table not in REBUILD:
            return text
        command, reach = REBUILD[self.table]
        first, last = self.changed[0] - dt.timedelta(days=reach), self.changed[-1] + dt.timedelta(days=reach)
        return f"{text}; rebuild downstream: {command} --start {first} --end {last}"


def restore(lake: Lake, table: str, version: int) -> RestoreSummary:
    """Make `version` the table's content again, as a new version (history is kept)."""
    current = lake.table(table)
    if current is None:
        raise LakeFormatError(f"{table} of lake {lake} has no versions yet: nothing to restore")
    target = lake.table(table, version)  # LakeFormatError when the version does not exist
    assert target is not None
    changed = sorted(_files_by_date(current).items() ^ _files_by_date(target).items())
    current.restore(version)
    after = lake.version(table)
    assert after is not None
    return RestoreSummary(table, version, after, tuple(sorted({day for day, _ in changed})))


def _files_by_date(delta: DeltaTable) -> dict[dt.date, frozenset[str]]:
    """Each date's data files in one version of a table."""
    files = pl.DataFrame(pa.table(delta.get_add_actions(flatten=True)))
    if files.is_empty():
        return {}
    grouped = files.group_by(pl.col("partition.date").cast(pl.Date)).agg(pl.col("path"))
    return {day: frozenset(paths) for day, paths in grouped.iter_rows()}


@dataclass(frozen=True)
class MaintenanceSummary:
    """What vacuum or optimize did, per table."""

    action: str
    counts: dict[str, int]

    def __str__(self) -> str:
        done = ", ".join(f"{table} {count:,}" for table, count in self.counts.items()) or "no table yet"
        return f"{self.action}: {done}"


def vacuum(lake: Lake, retention_hours: int = RETENTION_HOURS) -> MaintenanceSummary:
    """Delete data files no version of the last `retention_hours` reads (at least a week: time
    travel to any version of the last week keeps working)."""
    if retention_hours < RETENTION_HOURS:
        raise ClickstreamError(
            f"retention of {retention_hours} h is below the {RETENTION_HOURS} h (7 days) of time travel the lake keeps"
        )
    counts = {}
    for name, delta in _existing(lake):
        removed = delta.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=True)
        counts[name] = len(removed)
    return MaintenanceSummary("vacuum: data files deleted", counts)


def optimize(lake: Lake) -> MaintenanceSummary:
    """Compact each table's small files into larger ones (one commit per table; the rows unchanged)."""
    from deltalake import WriterProperties

    counts = {}
    for name, delta in _existing(lake):
        level = ZSTD_LEVELS.get(name, ZSTD_DEFAULT)
        metrics = delta.optimize.compact(
            writer_properties=WriterProperties(compression="ZSTD", compression_level=level)
        )
        counts[name] = int(metrics.get("numFilesRemoved", 0))
    return MaintenanceSummary("optimize: small files compacted", counts)


def _existing(lake: Lake) -> list[tuple[str, DeltaTable]]:
    return [(name, delta) for name in TABLES if (delta := lake.table(name)) is not None]


@dataclass(frozen=True)
class MigrateSummary:
    """Tables converted from the layout before Delta tables, or rewritten into session buckets."""

    converted: dict[str, int]  # table -> rows
    bucketed: dict[str, int] = field(default_factory=dict)  # table -> rows
    buckets: int = 1

    def __str__(self) -> str:
        if not self.converted and not self.bucketed:
            return "lake migrate: every table is already a bucketed Delta table; nothing to do"
        parts = []
        if self.converted:
            done = ", ".join(f"{table} ({rows:,} rows)" for table, rows in self.converted.items())
            parts.append(f"converted {done} to Delta tables")
        if self.bucketed:
            done = ", ".join(f"{table} ({rows:,} rows)" for table, rows in self.bucketed.items())
            parts.append(f"rewrote {done} into {self.buckets} session bucket(s)")
        return f"lake migrate: {'; '.join(parts)}"


def migrate(lake: Lake) -> MigrateSummary:
    """Convert each table still in the layout before Delta tables (`<table>/date=D/*.parquet`, or
    `cookie_intent/data.parquet`) in place: its rows become one commit of the table, one data file
    per date and batch, then the old files and the old lock folder go. Idempotent: a converted
    table is left alone, and a migration killed half-way is finished by the next one."""
    fs = lake.fs
    converted = {}
    for table in TABLES:
        old = lake.old_layout_files(table)
        if not old:
            continue
        if not _migrated(lake, table):
            frame = pl.concat([_old_rows(lake, table, path) for path in old], how="vertical")
            lake.commit(table, frame, replace=None, stage=MIGRATE, metadata={"files": len(old)})
            converted[table] = frame.height
        fs.rm(old)  # committed (now, or by a migration killed before this): the old copies are spare
    if fs.exists(lake.locks_folder):
        fs.rm(lake.locks_folder, recursive=True)
    bucketed = {table: rows for table in BUCKETED if (rows := _into_buckets(lake, table)) is not None}
    return MigrateSummary(converted, bucketed, lake.buckets)


def _into_buckets(lake: Lake, table: str) -> int | None:
    """Rewrite `table`, a Delta table partitioned by date alone (from before session buckets), as one
    partitioned by date and bucket; its rows, or None when there was nothing to rewrite. The old table
    moves aside to `_migrating/<table>` first and goes once the new one is committed, one date in memory
    at a time: a migration killed half-way is finished by the next (the new table started again from
    the old one). The old versions' history goes with the old table."""
    fs, target = lake.fs, lake.table_uri(table)
    aside = f"{lake.root.removeprefix('file://')}/_migrating/{table}"
    if fs.exists(aside):  # killed after the move: what stands at the target is a partial rewrite
        if fs.exists(target):
            fs.rm(target, recursive=True)
    else:
        delta = lake._open(table)
        if delta is None or "bucket" in delta.metadata().partition_columns:
            return None
        fs.makedirs(aside.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(target, aside, recursive=True)
    from deltalake import DeltaTable

    old = DeltaTable(aside, storage_options=lake.storage_options)
    days = sorted({str(values["date"]) for values in old.partitions()})
    rows = 0

    def frames() -> Iterator[pl.DataFrame]:
        nonlocal rows
        for day in days:
            files = old.file_uris(partition_filters=[("date", "=", day)])
            files = [unquote(uri.removeprefix("file://")) for uri in files] if lake.is_local else files
            frame = pl.read_parquet(files, glob=False, hive_partitioning=False, storage_options=lake.storage_options)
            rows += frame.height
            yield frame.with_columns(date=pl.lit(dt.date.fromisoformat(day)))

    lake.commit(table, frames(), replace=None, stage=MIGRATE, metadata={"rebucketed_from_version": old.version()})
    fs.rm(aside, recursive=True)
    parent = aside.rsplit("/", 1)[0]
    if fs.exists(parent) and not fs.ls(parent):
        fs.rm(parent, recursive=True)
    return rows


def _migrated(lake: Lake, table: str) -> bool:
    """Whether a migration commit of `table` landed (a killed migration may have left the old files)."""
    delta = lake._open(table)
    return delta is not None and any(entry.get("stage") == MIGRATE for entry in delta.history())


def _old_rows(lake: Lake, table: str, path: str) -> pl.DataFrame:
    """One old file's rows with the columns the Delta table stores."""
    with lake.fs.open(path, "rb") as handle:
        frame = pl.read_parquet(handle)
    folder, name = path.rstrip("/").split("/")[-2:]
    match = OLD_PART.match(name)
    assert match is not None
    if table == "cookie_intent":
        frame = frame.with_columns(date=pl.col("last_seen").dt.date())
    else:
        day = OLD_DATE.match(folder)
        assert day is not None
        frame = frame.with_columns(date=pl.lit(dt.date.fromisoformat(day.group(1))))
    if "batch" in TABLE_SCHEMAS[table]:
        frame = frame.with_columns(batch=pl.lit(match.group("batch") or "0"))
    return frame
