"""The lake layout: Hive-style date partitions of Parquet files under one root.

    <root>/<table>/date=YYYY-MM-DD/<part>.parquet

The root is a local path or any fsspec URL (``s3://bucket/lake``). Every write goes
to a temporary name beside its target and is then moved into place, so a reader
(or a crash) sees either the previous complete file or the new complete file,
never a half-written one. Temporary names do not end in ``.parquet`` and so are
never read.

On S3 the endpoint and credentials come only from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), read by both
s3fs (writes, listings) and polars (scans); nothing here names a credential.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import fsspec
import polars as pl

from clickstream.pipeline.core.errors import LakePathError, LockedError, NoDataError
from clickstream.pipeline.core.tracking import redacted

# A lock whose holder runs on another host cannot be checked; after this long it is taken over
# (longer than any task's timeout, so a live holder would already have been stopped by Airflow).
STALE_LOCK_AGE = dt.timedelta(hours=6)
TABLES = ("events", "quarantine", "sequences", "scores", "cookie_intent", "reports")
# events are rewritten by every ingest: zstd level 1 writes them 15-20% faster than the default for
# 11% more bytes (benchmarks/RESULTS.md, "ingest")
ZSTD_LEVELS = {"events": 1}
_PART_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


class Lake:
    """A lake root and the operations every stage needs on it."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")
        self.is_local = "://" not in self.root or self.root.startswith("file://")
        self.fs: fsspec.AbstractFileSystem
        # Other processes (Airflow tasks, workers on other hosts) write the same lake: cached
        # object-store listings would hide their partitions, so every listing asks the store.
        options = {} if self.is_local else {"use_listings_cache": False}
        self.fs, self._path = fsspec.core.url_to_fs(self.root, **options)

    # ---- layout -------------------------------------------------------------
    def table_dir(self, table: str) -> str:
        if table not in TABLES:
            raise LakePathError(f"unknown lake table {table!r}; expected one of {', '.join(TABLES)}")
        return f"{self._path}/{table}"

    def partition_dir(self, table: str, day: dt.date) -> str:
        return f"{self.table_dir(table)}/date={day.isoformat()}"

    def partition_file(self, table: str, day: dt.date, part: str = "data") -> str:
        if not _PART_NAME.match(part) or part.startswith("."):
            raise LakePathError(f"invalid partition file name {part!r}")
        return f"{self.partition_dir(table, day)}/{part}.parquet"

    def __str__(self) -> str:
        """The root as messages name it (any credential in a URL redacted)."""
        return redacted(self.root)

    def url(self, path: str) -> str:
        """The path as a URL that polars and pyarrow open with this lake's filesystem."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ---- reading ------------------------------------------------------------
    def dates(self, table: str) -> list[dt.date]:
        """Dates that hold at least one committed Parquet file, ascending."""
        base = self.table_dir(table)
        if not self.fs.exists(base):
            return []
        days = []
        for entry in self.fs.ls(base, detail=False):
            match = _DATE_DIR.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if match and self.fs.glob(f"{entry.rstrip('/')}/*.parquet"):
                days.append(dt.date.fromisoformat(match.group(1)))
        return sorted(days)

    def require_dates(self, table: str, start: dt.date | None, end: dt.date | None, then: str) -> list[dt.date]:
        """The table's dates in [start, end] (default: all), ascending; a NoDataError naming the
        lake, the table and the window when there are none, ending with `then` (what to run first)."""
        days = [d for d in self.dates(table) if (start is None or d >= start) and (end is None or d <= end)]
        if not days:
            window = "" if start is None and end is None else f" for {start or '...'}..{end or '...'}"
            raise NoDataError(f"no {table}/ partitions{window} in lake {self}; {then}")
        return days

    def partition_files(self, table: str, day: dt.date) -> list[str]:
        """Committed files of one partition, sorted by name (stable read order)."""
        return sorted(self.fs.glob(f"{self.partition_dir(table, day)}/*.parquet"))

    def files(self, table: str, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
        """Committed files of the partitions in [start, end] (inclusive), in date order."""
        return [
            path
            for day in self.dates(table)
            if (start is None or day >= start) and (end is None or day <= end)
            for path in self.partition_files(table, day)
        ]

    def scan(
        self, table: str, start: dt.date | None = None, end: dt.date | None = None
    ) -> pl.LazyFrame | None:
        """A lazy frame over [start, end] with the partition `date` column, or None if empty."""
        paths = self.files(table, start, end)
        if not paths:
            return None
        return pl.scan_parquet(
            [self.url(p) for p in paths], hive_partitioning=True, storage_options=self._storage_options()
        )

    def _storage_options(self) -> dict[str, str] | None:
        """Options polars' object store needs beyond the AWS_* environment (plain-HTTP endpoints)."""
        if self.is_local:
            return None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        return {"aws_allow_http": "true"} if endpoint.startswith("http://") else None

    def read_file(self, path: str) -> pl.DataFrame:
        if self.is_local:
            return pl.read_parquet(path)
        with self.fs.open(path, "rb") as handle:
            return pl.read_parquet(handle)

    # ---- writing ------------------------------------------------------------
    def write_partition(
        self, table: str, day: dt.date, frame: pl.DataFrame | pl.LazyFrame, part: str = "data"
    ) -> str:
        """Atomically replace one partition file; returns its path.

        The frame is written as given: callers sort it first so that the same
        input always yields the same file. Compression: zstd, at ZSTD_LEVELS[table] where set.
        """
        return self.write_file(self.partition_file(table, day, part), frame, ZSTD_LEVELS.get(table))

    def write_file(self, path: str, frame: pl.DataFrame | pl.LazyFrame, zstd_level: int | None = None) -> str:
        """Write `frame` to a temporary name beside `path`, then move it into place. A LazyFrame
        is streamed to a local lake (memory bounded by polars' batches, not by the frame).
        `zstd_level`: polars' default when None."""

        def write(target: str | BinaryIO) -> None:
            if isinstance(frame, pl.LazyFrame) and isinstance(target, str):
                frame.sink_parquet(target, statistics=True, maintain_order=True, compression_level=zstd_level)
            else:
                whole = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
                whole.write_parquet(target, statistics=True, compression_level=zstd_level)

        return self._write_atomically(path, write)

    def write_bytes(self, path: str, data: bytes) -> str:
        """Replace the file at `path` with `data` atomically: readers see the old or the new content."""

        def write(target: str | BinaryIO) -> None:
            if isinstance(target, str):
                Path(target).write_bytes(data)
            else:
                target.write(data)

        return self._write_atomically(path, write)

    def config_file(self, name: str) -> str:
        """Path of a settings file kept with the lake's data, `<lake>/_config/<name>`."""
        return f"{self._path}/_config/{name}"

    def _write_atomically(self, path: str, write: Callable[[str | BinaryIO], object]) -> str:
        """`write` fills a temporary beside `path`: a local file path on a local lake, an open binary
        handle on an object store; then the temporary is moved into place."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            if self.is_local:
                write(tmp)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
                _fsync_dir(parent)  # the rename itself survives a power cut
                _remove_abandoned_temporaries(path)
            else:
                with self.fs.open(tmp, "wb") as handle:
                    write(handle)
                self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return path

    def remove_partition_file(self, table: str, day: dt.date, part: str) -> None:
        path = self.partition_file(table, day, part)
        if self.fs.exists(path):
            self.fs.rm(path)

    # ---- locking ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, table: str, day: dt.date | None = None) -> Iterator[None]:
        """Hold an exclusive lock on a partition (or a whole table) while writing it.

        Locks are files under ``<root>/_locks`` created exclusively (``O_EXCL`` locally,
        a conditional ``If-None-Match`` put on S3), so two writers never both hold one.
        A lock left by a process that no longer runs on this host is taken over at once;
        one from another host after `STALE_LOCK_AGE`.
        """
        name = f"{table}-{day.isoformat() if day else 'all'}.lock"
        lock_dir = f"{self._path}/_locks"
        self.fs.makedirs(lock_dir, exist_ok=True)
        path = f"{lock_dir}/{name}"
        _acquire(self, path, owner())
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)


def _acquire(lake: Lake, path: str, me: str) -> None:
    for _ in range(2):
        try:
            if lake.is_local:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, "w") as handle:
                    handle.write(me)
            else:
                with lake.fs.open(path, "xb") as handle:
                    handle.write(me.encode())
            return
        except FileExistsError:
            try:
                holder = lake.fs.cat(path).decode(errors="replace").strip()
                age = dt.datetime.now(dt.UTC) - _as_utc(lake.fs.modified(path))
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if not is_stale(holder, age):
                raise LockedError(f"{path.rsplit('/', 1)[-1]} is held by process {holder}") from None
            lake.fs.rm(path)  # stale: its process is gone
    raise LockedError(f"could not take lock {path}")


def owner() -> str:
    """`host:pid` of this process, as locks (and ingest staging folders) record their owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_stale(holder: str, age: dt.timedelta) -> bool:
    """Whether what `holder` (an `owner()`) left `age` ago is abandoned: on this host once its process
    is gone; from another host after STALE_LOCK_AGE."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return age >= STALE_LOCK_AGE  # cannot check another host's processes
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def _as_utc(moment: dt.datetime) -> dt.datetime:
    """Filesystems report naive local times (local disk) or aware UTC ones (S3)."""
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.astimezone().astimezone(dt.UTC)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ABANDONED_AFTER_S = 3600.0  # a temporary file this old belongs to a writer that was killed


def _remove_abandoned_temporaries(path: str) -> None:
    """Delete temporaries of `path` left by killed writers (never read, but they take space).
    Only old ones: a live writer of the same file holds the partition lock and finishes quickly."""
    cutoff = time.time() - ABANDONED_AFTER_S
    for leftover in glob.glob(f"{glob.escape(path)}.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(leftover).st_mtime < cutoff:
                os.remove(leftover)
