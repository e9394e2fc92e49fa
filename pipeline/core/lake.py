"""The lake: one Delta table per stage output, partitioned by UTC date, under one root.

    <root>/<table>/_delta_log/...            the table's commits (Delta Lake protocol)
    <root>/<table>/date=YYYY-MM-DD/*.parquet  its data files (zstd)

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

import datetime as dt
import os
import queue
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from clickstream.pipeline.core import schemas
from clickstream.pipeline.core.errors import LakeConflictError, LakeFormatError, LakePathError, NoDataError
from clickstream.pipeline.core.tracking import redacted

if TYPE_CHECKING:
    import fsspec
    from deltalake import DeltaTable

# Each table's columns as stored: the stage schema, the ingest batch that delivered a row where a
# re-delivered batch must replace its own rows, and the `date` partition column.
TABLE_SCHEMAS: dict[str, pl.Schema] = {
    "events": pl.Schema({**schemas.EVENTS, "batch": pl.String, "date": pl.Date}),
    "quarantine": pl.Schema({**schemas.QUARANTINE, "batch": pl.String, "date": pl.Date}),
    "sequences": pl.Schema({**schemas.with_string_types(schemas.SEQUENCES), "date": pl.Date}),
    "scores": pl.Schema({**schemas.SCORES, "date": pl.Date}),
    "cookie_intent": pl.Schema({**schemas.COOKIE_INTENT, "date": pl.Date}),  # date of last_seen
}
TABLES = tuple(TABLE_SCHEMAS)
PARTITION_BY = ["date"]
# events are rewritten by every ingest: zstd level 1 writes them 15-20% faster than the default for
# 11% more bytes (benchmarks/RESULTS.md, "ingest")
ZSTD_LEVELS = {"events": 1}
ZSTD_DEFAULT = 3
# vacuum keeps files that versions of the last week still read: a week of time travel at least
RETENTION_HOURS = 7 * 24
_DATE_DIR = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


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

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")
        self.is_local = "://" not in self.root or self.root.startswith("file://")
        self._path = self.root.removeprefix("file://") if self.is_local else self.root

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
        if self.is_local:
            return None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        return {"aws_allow_http": "true"} if endpoint.startswith("http://") else None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The root's file system, for the plain files kept beside the tables (settings, reports)."""
        import fsspec

        # other processes write the same lake: cached object-store listings would hide their files
        options = {} if self.is_local else {"use_listings_cache": False}
        return fsspec.core.url_to_fs(self.root, **options)[0]

    # ---- reading ------------------------------------------------------------
    def table(self, table: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table at `version` (default: the latest), or None while it was never written.
        A LakeFormatError for a table in the pre-Delta layout or a version it does not have."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = self.table_uri(table)
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            if version is not None and self._has_log(table):
                raise LakeFormatError(f"{table} of lake {self} has no version {version}") from None
            if self._has_plain_partitions(table):
                raise LakeFormatError(
                    f"{table}/ of lake {self} is in the layout before Delta tables; run `clickstream lake migrate`"
                ) from None
            return None
        except Exception as error:  # delta-rs reports a missing version as a generic error
            if version is not None and "version" in str(error).lower():
                raise LakeFormatError(f"{table} of lake {self} has no version {version}") from None
            raise

    def version(self, table: str) -> int | None:
        """The table's latest version, None while it was never written."""
        delta = self.table(table)
        return None if delta is None else delta.version()

    def rows_per_date(self, table: str, version: int | None = None) -> dict[dt.date, int]:
        """Rows of each date that holds any, from the commit log's file statistics (no data read)."""
        delta = self.table(table, version)
        if delta is None:
            return {}
        actions = pl.DataFrame(pa.table(delta.get_add_actions(flatten=True)))
        if actions.is_empty():
            return {}
        counts = (
            actions.group_by(pl.col("partition.date").cast(pl.Date).alias("date"))
            .agg(pl.col("num_records").sum())
            .filter(pl.col("num_records") > 0)
            .sort("date")
        )
        return dict(counts.iter_rows())

    def dates(self, table: str, version: int | None = None) -> list[dt.date]:
        """Dates that hold at least one row, ascending."""
        return list(self.rows_per_date(table, version))

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
        self, table: str, start: dt.date | None = None, end: dt.date | None = None, version: int | None = None
    ) -> list[str]:
        """The data files of the dates in [start, end] at `version`, in date order (then by name:
        the order one commit wrote them in)."""
        delta = self.table(table, version)
        if delta is None:
            return []
        filters = [("date", op, day.isoformat()) for op, day in ((">=", start), ("<=", end)) if day is not None]
        return sorted(delta.file_uris(partition_filters=filters or None), key=_date_then_name)

    def scan(
        self, table: str, start: dt.date | None = None, end: dt.date | None = None, version: int | None = None
    ) -> pl.LazyFrame | None:
        """A lazy frame over the dates in [start, end] at `version` (default: latest), with the
        `date` column, rows in date order; None when there are none."""
        paths = self.files(table, start, end, version)
        if not paths:
            return None
        return pl.scan_parquet(
            paths,
            hive_partitioning=True,
            hive_schema={"date": pl.Date},
            storage_options=self.storage_options,
        )

    def read(
        self, table: str, start: dt.date | None = None, end: dt.date | None = None, version: int | None = None
    ) -> pl.DataFrame:
        """The rows of [start, end] at `version` with the table's stored columns (none: an empty frame)."""
        scan = self.scan(table, start, end, version)
        schema = TABLE_SCHEMAS[table]
        return pl.DataFrame(schema=schema) if scan is None else scan.select(schema.names()).collect()

    def history(self, table: str) -> list[Commit]:
        """The table's versions, newest first."""
        delta = self.table(table)
        if delta is None:
            raise LakeFormatError(f"{table} of lake {self} has no versions yet: nothing was written to it")
        return [_commit(entry) for entry in delta.history()]

    def commit_metadata(self, table: str, version: int) -> dict[str, str]:
        """The custom metadata of the commit that made `version` ({} for a version older than the log keeps)."""
        for commit in self.history(table):
            if commit.version == version:
                return commit.metadata
        return {}

    # ---- writing ------------------------------------------------------------
    def commit(
        self,
        table: str,
        frames: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        replace: str | None,
        stage: str,
        metadata: dict[str, object] | None = None,
    ) -> int:
        """Replace the rows that SQL predicate `replace` matches (None: every row) with `frames`
        (every row of which must match it) in one commit; returns the new version. `frames` may be a generator: it is
        written as it comes, one frame in memory at a time. The commit records `stage` and
        `metadata` (batch id, row counts, what was read), and the code version."""
        from deltalake import CommitProperties, WriterProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError

        if replace is not None:  # a whole-table write creates the table itself, in the same commit
            self._create(table)
        frames = [frames] if isinstance(frames, pl.DataFrame) else frames
        feed = _Feed(batch for frame in frames for batch in _arrow(frame, table).to_batches())
        reader = pa.RecordBatchReader.from_batches(_arrow_schema(table), feed.batches())
        info = {"stage": stage, "code_version": code_version(), **{k: str(v) for k, v in (metadata or {}).items()}}
        try:
            with feed:
                write_deltalake(
                    self.table_uri(table),
                    reader,
                    mode="overwrite",
                    predicate=replace,
                    partition_by=PARTITION_BY,
                    storage_options=self.storage_options,
                    writer_properties=WriterProperties(
                        compression="ZSTD", compression_level=ZSTD_LEVELS.get(table, ZSTD_DEFAULT)
                    ),
                    commit_properties=CommitProperties(custom_metadata=info, max_commit_retries=3),
                )
        except CommitFailedError as error:
            raise LakeConflictError(
                f"{stage}: another writer changed the same rows of {table} ({replace or 'all'}) at the same "
                f"time; nothing of this run was committed, run it again ({_first_line(error)})"
            ) from None
        except OSError as error:
            raise LakeConflictError(
                f"{stage}: could not commit to {table} of lake {self}: {_first_line(error)}"
            ) from None
        delta = self.table(table)
        assert delta is not None
        return delta.version()

    def _create(self, table: str) -> None:
        """Create the empty table with its schema and partitioning unless it exists (two writers
        creating it at once: one creates, the other finds it)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import CommitFailedError

        if self.table(table) is not None:
            return
        try:
            DeltaTable.create(
                self.table_uri(table),
                schema=_arrow_schema(table),
                mode="ignore",
                partition_by=PARTITION_BY,
                storage_options=self.storage_options,
            )
        except CommitFailedError:
            if self.table(table) is None:
                raise

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

    def _has_plain_partitions(self, table: str) -> bool:
        """Whether `table` holds Parquet files of the layout before Delta (no commit log)."""
        fs, base = self.fs, self.table_uri(table)
        if not fs.exists(base) or fs.exists(f"{base}/_delta_log"):
            return False
        return any(path.endswith(".parquet") for path in fs.find(base))  # find: a root's [ or ? is no pattern


class _Feed:
    """Produces a commit's record batches on a thread of its own, handed over one at a time.

    delta-rs pulls the batches from inside its async runtime, where nothing may start another
    (polars reading from S3, delta-rs reading a table's log): the producer runs outside it. An
    error of the producer aborts the write, so nothing is committed, and is raised again as it
    was."""

    def __init__(self, source: Iterable[pa.RecordBatch]) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name="lake-commit-feed", daemon=True)

    def __enter__(self) -> _Feed:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:  # the write failed because the producer did: its error is the story
            raise self._error

    def _produce(self) -> None:
        try:
            for batch in self._source:
                self._put(batch)
        except BaseException as error:  # handed to the committing thread, raised there
            self._error = error
        self._put(_END)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def batches(self) -> Iterator[pa.RecordBatch]:
        while (item := self._queue.get()) is not _END:
            yield item  # type: ignore[misc]
        if self._error is not None:
            raise RuntimeError("the commit's data could not be produced")


_END = object()


def dates_predicate(start: dt.date, end: dt.date) -> str:
    """The SQL predicate of the date partitions [start, end], for `Lake.commit(replace=...)`."""
    return f"date >= '{start.isoformat()}' AND date <= '{end.isoformat()}'"


def batch_predicate(batch: str) -> str:
    """The SQL predicate of one ingest batch's rows (batch ids are hex digits)."""
    if not re.fullmatch(r"[0-9a-f]+", batch):
        raise ValueError(f"not a batch id: {batch!r}")
    return f"batch = '{batch}'"


def code_version() -> str:
    """The installed clickstream version, recorded with every commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clickstream")
    except PackageNotFoundError:
        return "unknown"


def _arrow_schema(table: str) -> pa.Schema:
    return pl.DataFrame(schema=TABLE_SCHEMAS[table]).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def _arrow(frame: pl.DataFrame, table: str) -> pa.Table:
    """`frame` as the table's stored Arrow types: Categorical as strings (Delta has no dictionary
    type), large offsets as delta-rs writes them."""
    stored = schemas.conform(schemas.with_strings(frame), TABLE_SCHEMAS[table])
    return stored.to_arrow(compat_level=pl.CompatLevel.oldest())


def _date_then_name(uri: str) -> tuple[str, str]:
    match = _DATE_DIR.search(uri)
    return (match.group(1) if match else "", uri)


def _commit(entry: dict[str, object]) -> Commit:
    reserved = {"version", "timestamp", "operation", "operationParameters", "operationMetrics", "clientVersion"}
    metadata = {k: str(v) for k, v in entry.items() if k not in reserved and not isinstance(v, dict)}
    metrics = entry.get("operationMetrics") or {}
    rows = metrics.get("num_added_rows") if isinstance(metrics, dict) else None
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

