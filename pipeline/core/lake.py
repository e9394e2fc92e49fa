"""The lake: one Delta table per stage output, partitioned by UTC date and session bucket, under one root.

    <root>/<table>/_delta_log/...                     the table's commits (Delta Lake protocol)
    <root>/<table>/date=YYYY-MM-DD/bucket=B/*.parquet  its data files (zstd)

`events`, `sequences`, `scores` and `cookie_intent` are partitioned by date and bucket (a stable
hash of the session key, `pipeline.core.buckets`), `quarantine` by date alone. The bucket count is
fixed when the first of them is created (`Lake(root, buckets=...)`, else 1) and written into each
table's description (`buckets=N`), where every later writer reads it.

Every write is one Delta commit (`Lake.commit`) that replaces exactly the rows its predicate
names (a partition range, or one ingest batch) and adds the new ones: a reader, or a writer
killed at any instant, sees the table before the commit or after it, never a mix. Concurrent
writers are Delta's optimistic concurrency: commits that touch different partitions both land;
of two that replace the same rows, one lands and the other fails with a one-line
LakeConflictError. No lock files, no staging: the commit log is the only coordination, on a
local disk and on S3 alike (delta-rs commits through S3's conditional writes).

Readers see one table version from start to end (`scan(..., version=N)` reads an older one:
time travel). The root is a local path or an ``s3://`` URL; on S3 the endpoint and credentials
come only from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), read by delta-rs, polars and s3fs alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import polars as pl
import pyarrow as pa

from clickstream.pipeline.core import schemas
from clickstream.pipeline.core.buckets import BUCKET, bucket_of, cookie_bucket
from clickstream.pipeline.core.code import code_version
from clickstream.pipeline.core.config import object_store_options
from clickstream.pipeline.core.errors import (
    ClickstreamError,
    InputError,
    LakeConflictError,
    LakeFormatError,
    LakePathError,
    NoDataError,
    StorageError,
)
from clickstream.pipeline.core.tracking import redacted

if TYPE_CHECKING:
    import fsspec
    from deltalake import CommitProperties, DeltaTable
    from deltalake._internal import RemoveAction
    from deltalake.transaction import AddAction

# Each table's columns as stored: the stage schema, the ingest batch that delivered a row where a
# re-delivered batch must replace its own rows, and the `date` partition column.
TABLE_SCHEMAS: dict[str, pl.Schema] = {
    "events": pl.Schema({**schemas.EVENTS, "batch": pl.String, "bucket": BUCKET, "date": pl.Date}),
    "quarantine": pl.Schema({**schemas.QUARANTINE, "batch": pl.String, "date": pl.Date}),
    "sequences": pl.Schema({**schemas.SEQUENCES, "bucket": BUCKET, "date": pl.Date}),
    "scores": pl.Schema({**schemas.SCORES, "bucket": BUCKET, "date": pl.Date}),
    # date of last_seen; the bucket of the cookie, which is its sessions' bucket
    "cookie_intent": pl.Schema({**schemas.COOKIE_INTENT, "bucket": BUCKET, "date": pl.Date}),
}
TABLES = tuple(TABLE_SCHEMAS)
BUCKETED = tuple(table for table, schema in TABLE_SCHEMAS.items() if "bucket" in schema)
_DESCRIPTION = "clickstream {table}: partitioned by date and bucket = xxh3_64(session key) % buckets; buckets={n}"
_BUCKETS_IN = re.compile(r"\bbuckets=(\d+)\b")
# events are rewritten by every ingest: zstd level 1 writes them 15-20% faster than the default for
# 11% more bytes (benchmarks/RESULTS.md, "ingest")
ZSTD_LEVELS = {"events": 1}
ZSTD_DEFAULT = 3
# Rows per Parquet row group where a reader works a row group at a time: a training rank reads
# `sequences` in shard units of one row group (models.training.shards); other tables keep polars'
# default.
ROW_GROUP_ROWS = {"sequences": 65_536}
# vacuum keeps files that versions of the last week still read: a week of time travel at least
RETENTION_HOURS = 7 * 24
# tries of a commit that other writers' commits of other rows keep refusing (each try follows one of theirs)
COMMIT_ATTEMPTS = 10
MIGRATE = "migrate"  # the stage of the commit that converts a table of the layout before Delta tables
# in a local root, what delta-rs does not take literally: a percent escape, a backslash, a control character
_AMBIGUOUS_LOCAL = re.compile(r"%[0-9A-Fa-f]{2}|\\|[\x00-\x1f\x7f]")
# file names of the layout before Delta tables: part-<batch>.parquet (events, quarantine), data.parquet
OLD_PART = re.compile(r"^(?:part-(?P<batch>[0-9a-f]+)|data)\.parquet$")
OLD_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_BUCKET_FOLDER = re.compile(r"^bucket=(\d+)$")


@dataclass(frozen=True)
class Commit:
    """One version of a table, as `clickstream lake history` lists it."""

    version: int
    timestamp: dt.datetime
    operation: str
    stage: str
    batch: str
    rows: int | None
    metadata: dict[str, str]


class Lake:
    """A lake root and the operations every stage needs on its tables."""

    def __init__(self, root: str | Path, buckets: int | None = None) -> None:
        """`buckets`: the bucket count for a lake whose tables are still to be created (a lake
        that has them keeps theirs; asking for another is a LakeFormatError)."""
        self.root = str(root).rstrip("/")
        self._asked_buckets = buckets
        self._buckets: int | None = None
        self.is_local = "://" not in self.root or self.root.startswith("file://")
        self._path = self.root.removeprefix("file://") if self.is_local else self.root
        if self.is_local and (found := _AMBIGUOUS_LOCAL.search(self._path)):
            # delta-rs reads `lake%3F` as `lake?` and `lake\b` as `lake/b`: another folder, maybe another lake
            raise LakePathError(
                f"lake root {self} holds {found.group()!r}, which the Delta library reads as another path "
                "(a percent escape, a backslash or a control character); choose a root without it"
            )

    def __str__(self) -> str:
        """The root as messages name it (any credential in a URL redacted)."""
        return redacted(self.root)

    # ---- layout -------------------------------------------------------------
    def table_uri(self, table: str) -> str:
        if table not in TABLE_SCHEMAS:
            raise LakePathError(f"unknown lake table {table!r}; expected one of {', '.join(TABLES)}")
        return f"{self._path}/{table}"

    @property
    def storage_options(self) -> dict[str, str] | None:
        """Options delta-rs and polars need beyond the AWS_* environment (plain-HTTP endpoints)."""
        return None if self.is_local else object_store_options()

    @functools.cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The root's file system, for the commit log's entries and the plain files beside the tables.
        On an object store, one of this lake's own: fsspec's shared instances keep the endpoint they were
        made with, and listings are not cached (other processes write the same lake)."""
        import fsspec

        options = {} if self.is_local else {"use_listings_cache": False, "skip_instance_cache": True}
        return fsspec.core.url_to_fs(self.root, **options)[0]

    @property
    def buckets(self) -> int:
        """The lake's bucket count: the one its bucketed tables were created with (read from the first
        that exists, once), else the count this Lake was given, else 1."""
        if self._buckets is None:
            found = next((n for table in BUCKETED if (n := self._table_buckets(table)) is not None), None)
            asked = self._asked_buckets
            if found is not None and asked is not None and asked != found:
                raise LakeFormatError(
                    f"lake {self} has {found} bucket(s), fixed when its tables were created; "
                    f"CLICKSTREAM_BUCKETS={asked} cannot change it (unset it, or start a new lake)"
                )
            if found is None:
                return asked or 1  # not cached: another writer may create the tables meanwhile
            self._buckets = found
        return self._buckets

    def _table_buckets(self, table: str) -> int | None:
        delta = self._open(table)
        if delta is None or "bucket" not in delta.metadata().partition_columns:  # none, or from before buckets
            return None
        match = _BUCKETS_IN.search(delta.metadata().description or "")
        return int(match.group(1)) if match else 1

    def with_buckets(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with the `bucket` column of `table` (computed from its session keys where it has
        none; `cookie_intent` from the cookie)."""
        if "bucket" not in TABLE_SCHEMAS[table] or "bucket" in frame.columns:
            return frame
        bucket = cookie_bucket(self.buckets) if table == "cookie_intent" else bucket_of(self.buckets)
        return frame.with_columns(bucket)

    # ---- reading ------------------------------------------------------------
    def table(self, table: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table at `version` (default: the latest), or None while it was never written.
        A LakeFormatError for a table in the layout before Delta tables (not yet migrated, or its
        migration killed before it committed) or a version it does not have."""
        delta = self._open(table, version)
        # only an empty table (version 0: created, nothing committed) can hide old files: one listing
        if (delta is None or delta.version() == 0) and self.old_layout_files(table):
            raise LakeFormatError(
                f"{table}/ of lake {self} is in the layout before Delta tables; run `clickstream lake migrate`"
            )
        if delta is not None and delta.metadata().partition_columns != partition_columns(table):
            raise LakeFormatError(
                f"{table}/ of lake {self} is partitioned by {', '.join(delta.metadata().partition_columns)} "
                f"alone, from before session buckets; run `clickstream lake migrate`"
            )
        return delta

    def _open(self, table: str, version: int | None = None) -> DeltaTable | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = self.table_uri(table)
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            if version is not None and self._has_log(table):
                raise LakeFormatError(f"{table} of lake {self} has no version {version}") from None
            return None
        except Exception as error:  # delta-rs reports a missing version as a generic error
            if version is not None and "version" in str(error).lower():
                raise LakeFormatError(f"{table} of lake {self} has no version {version}") from None
            raise

    def version(self, table: str) -> int | None:
        """The table's latest version, None while it was never written."""
        delta = self.table(table)
        return None if delta is None else delta.version()

    def rows_per_date(self, table: str, version: int | None = None, bucket: int | None = None) -> dict[dt.date, int]:
        """Rows of each date that holds any (in `bucket`, default: all), from the commit log's file
        statistics (no data read)."""
        delta = self.table(table, version)
        if delta is None:
            return {}
        actions = pl.DataFrame(delta.get_add_actions(flatten=True))  # Arrow C stream: pa.table would import pandas
        if bucket is not None and not actions.is_empty():
            actions = actions.filter(pl.col("partition.bucket").cast(pl.Int64) == bucket)
        if actions.is_empty():
            return {}
        counts = (
            actions.group_by(pl.col("partition.date").cast(pl.Date).alias("date"))
            .agg(pl.col("num_records").sum())
            .filter(pl.col("num_records") > 0)
            .sort("date")
        )
        return dict(counts.iter_rows())

    def dates(self, table: str, version: int | None = None, bucket: int | None = None) -> list[dt.date]:
        """Dates that hold at least one row (of `bucket`, default: any), ascending."""
        return list(self.rows_per_date(table, version, bucket))

    def check_bucket(self, bucket: int) -> int:
        """`bucket`, when the lake has it; an InputError naming the lake's buckets otherwise."""
        if not 0 <= bucket < self.buckets:
            raise InputError(f"bucket {bucket} is not one of lake {self}'s buckets 0..{self.buckets - 1}")
        return bucket

    def require_dates(
        self, table: str, start: dt.date | None, end: dt.date | None, then: str, version: int | None = None
    ) -> list[dt.date]:
        """The table's dates in [start, end] (default: all) at `version`, ascending; a NoDataError
        naming the lake, the table and the window when there are none, ending with `then` (what to
        run first)."""
        days = [d for d in self.dates(table, version) if (start is None or d >= start) and (end is None or d <= end)]
        if not days:
            window = "" if start is None and end is None else f" for {start or '...'}..{end or '...'}"
            raise NoDataError(f"no {table}/ partitions{window} in lake {self}; {then}")
        return days

    def files(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        version: int | None = None,
        bucket: int | None = None,
    ) -> list[str]:
        """The data files of the dates in [start, end] (of `bucket`, default: all) at `version`, in
        date order (then by name: the order one commit wrote them in)."""
        delta = self.table(table, version)
        if delta is None:
            return []
        filters = [("date", op, day.isoformat()) for op, day in ((">=", start), ("<=", end)) if day is not None]
        if bucket is not None:
            filters.append(("bucket", "=", str(bucket)))
        uris = delta.file_uris(partition_filters=filters or None)
        # delta-rs gives a local file as a percent-encoded path (`lake?` as `lake%3F`, `%` as `%25`):
        # decoded, it is the file's own path again, which readers then take literally (never as a glob)
        paths = [unquote(uri.removeprefix("file://")) for uri in uris] if self.is_local else uris
        return sorted(paths, key=_date_then_name)

    def scan(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        version: int | None = None,
        bucket: int | None = None,
    ) -> pl.LazyFrame | None:
        """A lazy frame over the dates in [start, end] (of `bucket`, default: all) at `version`
        (default: latest), with the partition columns (`date`, and `bucket` where the table has
        it), rows in date order; None when there are none."""
        paths = self.files(table, start, end, version, bucket)
        if not paths:
            return None
        by_partition: dict[tuple[dt.date, int | None], list[str]] = {}
        for path in paths:
            by_partition.setdefault(partition_values(path), []).append(path)
        # the paths are taken literally: no glob (a root's `[1]` or `?` is no pattern) and no Hive
        # parsing (a root's `x=1` is no column); `date` and `bucket` come from the partition folders alone
        scans = [
            pl.scan_parquet(files, glob=False, hive_partitioning=False, storage_options=self.storage_options)
            .with_columns(pl.lit(day, dtype=pl.Date).alias("date"))
            .with_columns([] if part is None else [pl.lit(part, dtype=BUCKET).alias("bucket")])
            for (day, part), files in by_partition.items()
        ]
        return scans[0] if len(scans) == 1 else pl.concat(scans, how="vertical")

    def read(
        self,
        table: str,
        start: dt.date | None = None,
        end: dt.date | None = None,
        version: int | None = None,
        bucket: int | None = None,
    ) -> pl.DataFrame:
        """The rows of [start, end] (of `bucket`, default: all) at `version` with the table's stored
        columns (none: an empty frame)."""
        scan = self.scan(table, start, end, version, bucket)
        schema = TABLE_SCHEMAS[table]
        return pl.DataFrame(schema=schema) if scan is None else scan.select(schema.names()).collect()

    def history(self, table: str) -> list[Commit]:
        """The table's versions, newest first."""
        delta = self.table(table)
        if delta is None:
            raise LakeFormatError(f"{table} of lake {self} has no versions yet: nothing was written to it")
        return [_commit(entry) for entry in delta.history()]

    def commit_metadata(self, table: str, version: int) -> dict[str, str]:
        """The custom metadata of the commit that made `version`, read from that version's log entry
        ({} for a version older than the log keeps)."""
        info = self._commit_info(table, version)
        return {} if info is None else _custom_metadata(info)

    def _commit_info(self, table: str, version: int) -> dict[str, object] | None:
        """The commitInfo of `version`'s log entry; None when the log no longer (or not yet) holds it."""
        try:
            entries = self.fs.cat_file(f"{self.table_uri(table)}/_delta_log/{version:020d}.json").decode().splitlines()
        except FileNotFoundError:
            return None
        return next((json.loads(e)["commitInfo"] for e in entries if '"commitInfo"' in e), {})

    # ---- writing ------------------------------------------------------------
    def commit(
        self,
        table: str,
        frames: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        replace: Replace | None,
        stage: str,
        metadata: dict[str, object] | None = None,
    ) -> int:
        """Replace the rows `replace` names (None: every row) with `frames`, every row of which it
        must name, in one commit; returns the version the commit made.

        `frames` may be a generator: each frame is written as Parquet files (one per date, and per
        batch where the table has one) as it comes, so memory holds one frame at a time. Then one
        Delta transaction removes the replaced files and adds the new ones; a conflicting commit of
        another writer fails it (LakeConflictError) and nothing is committed. The commit records
        `stage`, `metadata` (batch id, what was read), the rows added and the code version.

        A write the file system refuses (no space left, read-only, no permission) is a one-line
        StorageError: the data files this commit wrote are removed and its transaction is not made."""
        written: list[str] = []  # data files of this commit, removed again while it is not made
        try:
            delta, commit_id = self._commit(table, frames, replace, stage, metadata, written)
        except Exception as error:
            reason = None if isinstance(error, ClickstreamError) else StorageError.reason(error)
            if reason is None:
                raise
            self._discard(written)
            raise StorageError(
                f"{stage}: cannot write table {table} of lake {self}: {reason}; nothing of this run was committed "
                f"to {table} (free space or make the lake writable, then run it again)"
            ) from None
        return self._version_of(table, delta.version(), commit_id)

    def _commit(
        self,
        table: str,
        frames: pl.DataFrame | Iterable[pl.DataFrame],
        replace: Replace | None,
        stage: str,
        metadata: dict[str, object] | None,
        written: list[str],
    ) -> tuple[DeltaTable, str]:
        """`commit` up to its transaction: the table version it was made on and the commit's id.
        `written` collects the data files as they are written, and is emptied once the transaction is made."""
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError

        # the version this commit builds on; refuses a name that is no lake table and, but for the
        # migration itself, a table in the layout before Delta
        delta = self._open(table) if stage == MIGRATE else self.table(table)
        if delta is None:
            delta = self._create(table)
        added: list[AddAction] = []
        for frame in [frames] if isinstance(frames, pl.DataFrame) else frames:
            added += self._write_files(table, frame, written)
            del frame  # written: let it go before the next one is made (memory holds one frame)
        rows = sum(json.loads(action.stats)["numRecords"] for action in added)
        commit_id = uuid.uuid4().hex  # finds the version this commit made among later ones
        info = {"stage": stage, "rows": rows, "code_version": code_version(), "commit_id": commit_id}
        custom = {k: str(v) for k, v in (info | (metadata or {})).items()}
        # Delta detects a concurrent commit that removed files this one removes, but not one that added
        # rows where this one adds: each batch, and each date a replacement covers, is an application
        # whose transactions advance one at a time, so two commits of the same batch or date conflict
        buckets = self.buckets if table in BUCKETED else None
        apps = [f"{table}-{key}" for key in _exclusive_keys(replace, added, buckets)]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            removed = _removals(delta, replace)
            replaced = _replaced_files(delta, replace, removed)
            versions = [Transaction(app, (delta.transaction_version(app) or 0) + 1) for app in apps]
            properties = CommitProperties(custom_metadata=custom, app_transactions=versions)
            try:
                _transact(delta, replace, added, removed, properties)
                written.clear()  # committed: the files are the table's now
                break
            except CommitFailedError as error:
                # Delta also refuses a commit when another one removed any file of the version it built
                # on, of other dates or batches too: built again on the new version (the same data
                # files), it goes through unless that commit took one of its batch or dates or changed
                # the files it replaces
                latest = self._open(table)
                assert latest is not None
                taken = any(latest.transaction_version(app) != delta.transaction_version(app) for app in apps)
                moved = _replaced_files(latest, replace, _removals(latest, replace)) != replaced
                if taken or moved or attempt == COMMIT_ATTEMPTS:
                    raise LakeConflictError(
                        f"{stage}: another writer changed the same rows of {table} ({replace or 'all rows'}) at the "
                        f"same time; nothing of this run was committed, run it again ({_first_line(error)})"
                    ) from None
                delta = latest
        return delta, commit_id

    def _discard(self, written: list[str]) -> None:
        """Remove data files a commit wrote but did not commit (best effort: no reader ever sees them,
        and on a full disk they hold the space)."""
        for path in written:
            with contextlib.suppress(Exception):
                self.fs.rm_file(path)
        written.clear()

    def _version_of(self, table: str, after: int, commit_id: str) -> int:
        """The version, the first after `after`, whose commit is recorded with `commit_id` (other writers may
        have committed since). Read from the log itself: delta-rs numbers `history()` down from the version
        it loaded while listing commits that may be newer, so under concurrent commits its numbers can be off."""
        version = after + 1
        while (info := self._commit_info(table, version)) is not None:
            if info.get("commit_id") == commit_id:
                return version
            version += 1
        raise LakeConflictError(f"the commit {commit_id} is not in the log of {self.table_uri(table)}")

    def _write_files(self, table: str, frame: pl.DataFrame, written: list[str]) -> list[AddAction]:
        """`frame` as zstd Parquet data files of the table, one per date (and batch), not yet committed;
        each file's path goes to `written` before it is written."""
        from deltalake.transaction import AddAction

        stored = schemas.conform(self.with_buckets(table, frame), TABLE_SCHEMAS[table])
        keys = [*partition_columns(table), *(["batch"] if "batch" in stored.columns else [])]
        level = ZSTD_LEVELS.get(table, ZSTD_DEFAULT)
        actions = []
        for key, part in _groups(stored, keys, partition_columns(table)):
            values = dict(zip(keys, key, strict=True))
            day, bucket, batch = values["date"], values.get("bucket"), values.get("batch")
            partition = {"date": day.isoformat()} | ({} if bucket is None else {"bucket": str(bucket)})
            folder = "/".join(f"{name}={value}" for name, value in partition.items())
            relative = f"{folder}/part-{uuid.uuid4().hex}.zstd.parquet"
            written.append(f"{self.table_uri(table)}/{relative}")
            size = self._write_parquet(written[-1], part, level, ROW_GROUP_ROWS.get(table))
            stats: dict[str, object] = {"numRecords": part.height}
            if batch is not None:
                stats |= {"minValues": {"batch": batch}, "maxValues": {"batch": batch}, "nullCount": {"batch": 0}}
            now = int(time.time() * 1000)
            actions.append(AddAction(relative, size, partition, now, True, json.dumps(stats)))
        return actions

    def _write_parquet(self, path: str, frame: pl.DataFrame, level: int, row_group_rows: int | None) -> int:
        """Write `frame` to `path` (a local file, or an object written in one put); returns its size."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        target = path if self.is_local else io.BytesIO()
        frame.write_parquet(
            target, compression="zstd", compression_level=level, statistics=True, row_group_size=row_group_rows
        )
        if isinstance(target, str):
            return Path(path).stat().st_size
        self.fs.pipe_file(path, target.getvalue())
        return target.tell()

    def _create(self, table: str) -> DeltaTable:
        """Create the empty table with its schema and partitioning (two writers creating it at
        once: one creates, the other finds it)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import CommitFailedError

        bucketed = table in BUCKETED
        with contextlib.suppress(CommitFailedError):  # created meanwhile by another writer
            DeltaTable.create(
                self.table_uri(table),
                schema=_arrow_schema(table),
                mode="ignore",
                partition_by=partition_columns(table),
                description=_DESCRIPTION.format(table=table, n=self.buckets) if bucketed else None,
                storage_options=self.storage_options,
            )
        delta = self._open(table)
        assert delta is not None
        return delta

    # ---- plain files beside the tables ----------------------------------------
    @property
    def locks_folder(self) -> str:
        """Where the layout before Delta tables kept its lock files (`clickstream lake migrate` removes it)."""
        return f"{self._path}/_locks"

    def config_file(self, name: str) -> str:
        """Path of a settings file kept with the lake's data, `<lake>/_config/<name>`."""
        return f"{self._path}/_config/{name}"

    def write_bytes(self, path: str, data: bytes) -> str:
        """Replace the file at `path` with `data`: readers see the old or the new content (a local
        temporary renamed into place; an object store's put is atomic)."""
        fs = self.fs
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if not self.is_local:
            fs.pipe_file(path, data)
            return path
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    # ---- layout checks --------------------------------------------------------
    def _has_log(self, table: str) -> bool:
        return self.fs.exists(f"{self.table_uri(table)}/_delta_log")

    def old_layout_files(self, table: str) -> list[str]:
        """The data files of the layout before Delta tables in `table`'s folder, sorted: `date=D/part-<batch>.parquet`,
        `date=D/data.parquet`, or `cookie_intent/data.parquet` (never a name a Delta commit writes)."""
        fs, base = self.fs, self.table_uri(table)
        if not fs.exists(base):
            return []
        found = fs.find(base)  # a listing, not a glob: a root's [ or ? is no pattern
        return sorted(path for path in found if _old_layout(table, *path.rstrip("/").split("/")[-2:]))


@dataclass(frozen=True)
class Replace:
    """The rows a commit replaces: the dates [first, last], one ingest batch's rows on every date, or
    none (`NOTHING`: the commit only adds)."""

    first: dt.date | None = None
    last: dt.date | None = None
    batch: str | None = None
    bucket: int | None = None  # with first and last: only that bucket's rows of the dates (None: every bucket)
    days: tuple[dt.date, ...] | None = None  # instead of first and last: exactly these dates

    @property
    def by_partition(self) -> bool:
        """Whether the rows replaced are whole partitions (dates, maybe of one bucket)."""
        return self.first is not None or self.days is not None

    def dates(self) -> list[dt.date]:
        """The dates whose partitions are replaced."""
        if self.days is not None:
            return sorted(self.days)
        assert self.first is not None and self.last is not None
        return [self.first + dt.timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def partition_filters(self) -> list[tuple[str, str, object]]:
        filters: list[tuple[str, str, object]]
        if self.days is not None:
            filters = [("date", "in", [day.isoformat() for day in sorted(self.days)])]
        else:
            assert self.first is not None and self.last is not None
            filters = [("date", ">=", self.first.isoformat()), ("date", "<=", self.last.isoformat())]
        return filters if self.bucket is None else [*filters, ("bucket", "=", str(self.bucket))]

    def __str__(self) -> str:
        if self.batch is not None:
            return f"batch {self.batch}"
        if not self.by_partition:
            return "no rows"
        days = self.dates()
        where = f"dates {days[0]}..{days[-1]}" if self.days is None else f"{len(days)} date(s) {days[0]}..{days[-1]}"
        return where if self.bucket is None else f"{where} of bucket {self.bucket}"


NOTHING = Replace()


def dates_predicate(start: dt.date, end: dt.date, bucket: int | None = None) -> Replace:
    """The rows of the dates [start, end] (of `bucket`, default: every bucket), for `Lake.commit(replace=...)`."""
    return Replace(first=start, last=end, bucket=bucket)


def partitions_predicate(days: Iterable[dt.date], bucket: int) -> Replace:
    """The rows of exactly `days` in `bucket`, for `Lake.commit(replace=...)`."""
    return Replace(bucket=bucket, days=tuple(sorted(set(days))))


def partition_columns(table: str) -> list[str]:
    """The table's partition columns: `date`, and `bucket` for the bucketed tables."""
    return ["date", "bucket"] if table in BUCKETED else ["date"]


def batch_predicate(batch: str) -> Replace:
    """One ingest batch's rows on every date, for `Lake.commit(replace=...)` (batch ids are hex digits)."""
    if not re.fullmatch(r"[0-9a-f]+", batch):
        raise ValueError(f"not a batch id: {batch!r}")
    return Replace(batch=batch)


def _removals(delta: DeltaTable, replace: Replace | None) -> list[RemoveAction]:
    """Remove actions for the data files of the batch `replace` names (none for a commit that
    replaces no batch) in `delta`'s version: every file holds one batch, named by its statistics (a
    file that might hold rows of several is a LakeFormatError)."""
    from deltalake._internal import RemoveAction

    if replace is None or replace.batch is None:
        return []
    batch = replace.batch
    files = pl.DataFrame(pa.table(delta.get_add_actions(flatten=True)))
    if files.is_empty():
        return []
    if "min.batch" not in files.columns or files.select(pl.col("min.batch", "max.batch").is_null().any()).row(0)[0]:
        raise LakeFormatError(f"{delta.table_uri} holds data files without batch statistics; rewrite it by batch")
    mixed = files.filter(pl.col("min.batch") != pl.col("max.batch"))
    if mixed.height and mixed.filter((pl.col("min.batch") <= batch) & (pl.col("max.batch") >= batch)).height:
        raise LakeFormatError(f"{delta.table_uri} holds data files of several batches; rewrite it by batch")
    now = int(time.time() * 1000)
    mine = files.filter(pl.col("min.batch") == batch)
    partitions = [name for name in ("date", "bucket") if f"partition.{name}" in mine.columns]
    rows = mine.select("path", "size_bytes", *(f"partition.{name}" for name in partitions)).iter_rows()
    return [
        RemoveAction(path, True, now, size, {name: str(value) for name, value in zip(partitions, values, strict=True)})
        for path, size, *values in rows
    ]


def _arrow_schema(table: str) -> pa.Schema:
    """The table's Delta schema: Categorical columns are strings (Delta has no dictionary type; the
    data files hold them dictionary-encoded, which every Parquet reader reads as strings)."""
    stored = schemas.with_string_types(TABLE_SCHEMAS[table])
    return pl.DataFrame(schema=stored).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def _transact(
    delta: DeltaTable,
    replace: Replace | None,
    added: list[AddAction],
    removed: list[RemoveAction],
    properties: CommitProperties,
) -> None:
    """One Delta transaction on `delta`'s version: remove what `replace` names, add `added`. Dates
    (or the whole table) are Delta's own overwrite by partition; a batch's files (`removed`, from
    `_removals`) are removed by name."""
    partitioning = delta.metadata().partition_columns
    if replace is None or replace.by_partition:
        filters = None if replace is None else replace.partition_filters()
        delta.create_write_transaction(
            added, "overwrite", delta.schema(), partitioning, filters, commit_properties=properties
        )
        return
    delta.create_write_transaction(
        [*added, *removed], "append", delta.schema(), partitioning, commit_properties=properties
    )


def _exclusive_keys(replace: Replace | None, added: list[AddAction], buckets: int | None) -> list[str]:
    """What no other commit may change at the same time as this one: its batch, or every partition
    (date, and bucket of a bucketed table: `buckets` of them) it replaces or adds rows to (an
    append-only commit: none). Keys are per partition whatever the commit covers, so a commit of a
    whole date and one of a bucket of it meet on that bucket's key."""
    if replace is not None and replace.batch is not None:
        return [f"batch-{replace.batch}"]
    if replace is not None and not replace.by_partition:
        return []
    keys = {(action.partition_values["date"], action.partition_values.get("bucket")) for action in added}
    if replace is not None:
        parts = [replace.bucket] if replace.bucket is not None or buckets is None else list(range(buckets))
        keys |= {(day.isoformat(), None if part is None else str(part)) for day in replace.dates() for part in parts}
    return [f"date-{day}" if part is None else f"date-{day}-bucket-{part}" for day, part in sorted(keys, key=str)]


def _groups(
    frame: pl.DataFrame, keys: list[str], partitions: list[str]
) -> list[tuple[tuple[object, ...], pl.DataFrame]]:
    """`frame`'s rows by the values of `keys`, without the `partitions` columns (Delta keeps them in
    the log); a frame of one group, as the stages commit them, is not copied."""
    if frame.is_empty():
        return []
    first = frame.select(pl.col(keys).first()).row(0)
    same = [pl.col(key).eq_missing(value) for key, value in zip(keys, first, strict=True)]
    if frame.select(pl.all_horizontal(same)).to_series().all():
        return [(first, frame.drop(partitions))]
    groups = frame.partition_by(keys, as_dict=True, maintain_order=True)
    return [(key, part.drop(partitions)) for key, part in groups.items()]


def _replaced_files(delta: DeltaTable, replace: Replace | None, removed: list[RemoveAction]) -> set[str]:
    """The data files of `delta`'s version that a commit replacing `replace` removes (a batch's:
    `removed`)."""
    if replace is None:
        return set(delta.file_uris())
    if replace.batch is not None:
        return {action.path for action in removed}
    if replace.first is None:
        return set()
    return set(delta.file_uris(partition_filters=replace.partition_filters()))


def _old_layout(table: str, folder: str, name: str) -> bool:
    return bool(OLD_PART.match(name)) and (folder == table or bool(OLD_DATE.match(folder)))


def partition_values(path: str) -> tuple[dt.date, int | None]:
    """The date and bucket of a data file, from its own folders `date=YYYY-MM-DD[/bucket=B]` (never
    from the lake root's path); None for the bucket of a table without one."""
    folders = [unquote(name) for name in path.split("/")[-3:-1]]
    bucket = _BUCKET_FOLDER.match(folders[-1]) if folders else None
    match = OLD_DATE.match(folders[0] if bucket is not None and len(folders) == 2 else folders[-1] if folders else "")
    if match is None:
        raise LakeFormatError(f"data file {redacted(path)} is not in a date=YYYY-MM-DD folder")
    return dt.date.fromisoformat(match.group(1)), None if bucket is None else int(bucket.group(1))


def _date_then_name(uri: str) -> tuple[dt.date, str]:
    return (partition_values(uri)[0], uri)


def _custom_metadata(entry: dict[str, object]) -> dict[str, str]:
    """What a commit recorded of its own (stage, batch, rows, versions read), without Delta's fields."""
    reserved = {"version", "timestamp", "operation", "operationParameters", "operationMetrics", "clientVersion"}
    return {k: str(v) for k, v in entry.items() if k not in reserved and not isinstance(v, dict)}


def _commit(entry: dict[str, object]) -> Commit:
    metadata = _custom_metadata(entry)
    rows = metadata.get("rows")
    stamp = int(entry.get("timestamp") or 0)
    return Commit(
        version=int(entry["version"]),  # type: ignore[arg-type]
        timestamp=dt.datetime.fromtimestamp(stamp / 1000, dt.UTC),
        operation=str(entry.get("operation", "")),
        stage=metadata.get("stage", ""),
        batch=metadata.get("batch", ""),
        rows=None if rows is None else int(rows),
        metadata=metadata,
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
