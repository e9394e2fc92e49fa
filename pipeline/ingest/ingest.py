"""`clickstream ingest`: raw logs into canonical events in the lake, bad rows into the quarantine.

Guarantees
- Accounting: rows_read = rows_written + quarantined + duplicates, for every run. A row is a
  physical line of a text file (headers of CSV-with-header files excepted, blank lines
  included: they are quarantined as "blank line") or a row of a Parquet file.
- Batches: the files of one call form a batch whose id hashes the format and the files'
  absolute paths. Its events go to `events/date=D/part-<batch>.parquet` (D = UTC date of the
  event), its rejects to `quarantine/date=<ingestion date>/part-<batch>.parquet`. Re-running a
  batch replaces exactly its own files (and removes the ones it no longer produces); other
  batches' files stay. Each file is replaced atomically, so a crash leaves the previous one.
- Same input, same output: rows are deduplicated (exact duplicates within the batch are
  dropped and counted) and sorted by all columns, session/cookie first, then time.
- Failure: past `settings.bad_row_threshold` (share of rows read that were quarantined) the
  run writes the quarantine, so the reasons can be inspected, but no events, and raises
  BadRowThresholdError. A file none of whose rows is valid is the wrong file (a YOOCHOOSE buys
  file given as clicks, say), not a few bad rows: the same, but an InputError naming it. An
  unreadable file raises InputError before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import BadRowThresholdError, InputError
from clickstream.pipeline.core.lake import Lake, is_stale, owner
from clickstream.pipeline.core.schemas import EVENTS, QUARANTINE, conform
from clickstream.pipeline.ingest.raw_fields import TimeWindow
from clickstream.pipeline.ingest.read_events import read_event_log
from clickstream.pipeline.ingest.read_retailrocket import read_retailrocket
from clickstream.pipeline.ingest.read_yoochoose import read_buys, read_clicks

if TYPE_CHECKING:

    from clickstream.pipeline.ingest.raw_fields import ParsedChunk, TimeWindow

FORMATS = ("yoochoose", "events", "retailrocket")
SORT_KEYS = ("session_id", "cookie_id", "ts", "event_type", "item_id", "category", "price", "quantity")


@dataclass(frozen=True)
class IngestSummary:
    """The outcome of one ingest; `str()` is the CLI's one-line summary."""

    fmt: str
    batch: str
    files: int
    rows_read: int
    rows_written: int
    quarantined: int
    duplicates: int
    dates: tuple[dt.date, ...]
    ingestion_date: dt.date

    def __str__(self) -> str:
        span = f"{self.dates[0]}..{self.dates[-1]}" if self.dates else "none"
        share = self.quarantined / self.rows_read if self.rows_read else 0.0
        return (
            f"ingested {self.files} {self.fmt} file(s) as batch {self.batch}: {self.rows_read:,} rows read, "
            f"{self.rows_written:,} written to {len(self.dates)} date(s) ({span}), "
            f"{self.quarantined:,} quarantined ({share:.2%}), {self.duplicates:,} duplicates dropped"
        )


def batch_id(fmt: str, files: Sequence[Path], buys: Sequence[Path] = ()) -> str:
    """A short id for this set of inputs: the same files (by absolute path) give the same id."""
    names = [str(p.absolute()) for p in sorted(files)] + ["--buys"] + [str(p.absolute()) for p in sorted(buys)]
    return hashlib.sha256("\0".join([fmt, *names]).encode()).hexdigest()[:12]


def ingest_files(
    settings: Settings,
    fmt: str,
    files: Sequence[Path],
    buys: Sequence[Path] = (),
    *,
    ingestion_date: dt.date | None = None,
) -> IngestSummary:
    """Validate raw logs of format `fmt` into `events/` and `quarantine/` (see module docstring).

    `ingestion_date` (default: today, UTC) dates the quarantine partition and bounds the
    accepted timestamps (at most the end of the following day). Idempotent per batch.
    """
    files, buys = [Path(p) for p in files], [Path(p) for p in buys]
    _check_request(fmt, files, buys)
    today = ingestion_date or dt.datetime.now(dt.UTC).date()
    batch = batch_id(fmt, files, buys)
    lake = Lake(settings.lake)
    _remove_abandoned_staging(Path(settings.home) / "staging")
    staging = Path(settings.home) / "staging" / f"ingest-{batch}-{uuid.uuid4().hex[:8]}@{owner()}"
    try:
        staged = _stage(_parsed_chunks(fmt, files, buys, TimeWindow.for_ingestion(today)), staging, fmt)
        rows_read = staged.rows + staged.quarantined
        share = staged.quarantined / rows_read if rows_read else 0.0
        _write_quarantine(lake, today, batch, staged.rejects)
        where = f"nothing written to events/, see quarantine/date={today}/part-{batch}.parquet"
        _check_no_wrong_file(staged, fmt, where)
        if share > settings.bad_row_threshold:
            worst, count = staged.bad_by_file.most_common(1)[0]
            raise BadRowThresholdError(
                f"{staged.quarantined:,} of {rows_read:,} rows ({share:.2%}) are bad, above the "
                f"{settings.bad_row_threshold:.2%} threshold (most in {worst}: {count:,}); {where}"
            )
        written, dates = _commit_events(lake, batch, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return IngestSummary(
        fmt=fmt,
        batch=batch,
        files=len(files) + len(buys),
        rows_read=rows_read,
        rows_written=written,
        quarantined=staged.quarantined,
        duplicates=staged.rows - written,
        dates=dates,
        ingestion_date=today,
    )


def _remove_abandoned_staging(root: Path) -> None:
    """Delete the staging folders of ingests that were killed before they could (pipeline.core.lake.is_stale
    of the owner in the folder's name)."""
    now = dt.datetime.now(dt.UTC)
    for folder in root.glob("ingest-*@*"):
        with contextlib.suppress(FileNotFoundError):  # another ingest's cleanup got there first
            age = now - dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.UTC)
            if is_stale(folder.name.rpartition("@")[2], age):
                shutil.rmtree(folder, ignore_errors=True)


def _check_request(fmt: str, files: list[Path], buys: list[Path]) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not files:
        raise InputError("no input files given")
    if buys and fmt != "yoochoose":
        raise InputError(f"--buys applies to the yoochoose format only, not {fmt}")
    for path in [*files, *buys]:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if not path.is_file():
            raise InputError(f"{path} is not a regular file")


def _check_no_wrong_file(staged: _Staged, fmt: str, where: str) -> None:
    """InputError for the first file that gave rows but not one valid row."""
    for path, bad in staged.bad_by_file.items():
        if not staged.good_by_file[path]:
            reasons = staged.rejects.filter(pl.col("file") == path).get_column("reason").value_counts(sort=True)
            hint = ""
            if fmt == "yoochoose":
                hint = "; YOOCHOOSE clicks files are the arguments, buys files go after --buys"
            raise InputError(
                f"{path}: none of its {bad:,} rows is valid {fmt} input (most often: {reasons[0, 'reason']}){hint}; "
                f"{where}"
            )


def _parsed_chunks(
    fmt: str, files: list[Path], buys: list[Path], window: TimeWindow
) -> Iterator[tuple[Path, ParsedChunk]]:
    if fmt == "yoochoose":

        for path in files:
            for parsed in read_clicks(path, window, labelled=bool(buys)):
                yield path, parsed
        for path in buys:
            for parsed in read_buys(path, window):
                yield path, parsed
    elif fmt == "events":

        for path in files:
            for parsed in read_event_log(path, window):
                yield path, parsed
    else:

        for path in files:
            for parsed in read_retailrocket(path, window):
                yield path, parsed


@dataclass
class _Staged:
    rows: int
    quarantined: int
    rejects: pl.DataFrame
    bad_by_file: Counter[str]
    good_by_file: Counter[str]


def _stage(chunks: Iterator[tuple[Path, ParsedChunk]], staging: Path, fmt: str) -> _Staged:
    """Spread valid events over per-date staging files; keep the rejects (in file and line order)."""
    rows, rejects, bad_by_file, good_by_file = 0, [], Counter(), Counter()
    for number, (path, parsed) in enumerate(chunks):
        rows += parsed.events.height
        good_by_file[str(path)] += parsed.events.height
        if parsed.rejects.height:
            bad_by_file[str(path)] += parsed.rejects.height
            rejects.append(parsed.rejects.with_columns(file=pl.lit(str(path)), format=pl.lit(fmt)))
        if parsed.events.height:
            dated = parsed.events.with_columns(date=pl.col("ts").dt.date())
            for (day,), part in dated.partition_by("date", as_dict=True, include_key=False).items():
                folder = staging / day.isoformat()
                folder.mkdir(parents=True, exist_ok=True)
                part.write_parquet(folder / f"{number:06d}.parquet", compression="lz4", statistics=False)
    quarantine = conform(pl.concat(rejects), QUARANTINE) if rejects else pl.DataFrame(schema=QUARANTINE)
    return _Staged(rows, quarantine.height, quarantine, bad_by_file, good_by_file)


def _commit_events(lake: Lake, batch: str, staging: Path) -> tuple[int, tuple[dt.date, ...]]:
    """Write each staged date as `part-<batch>`, deduplicated and sorted; drop this batch's stale parts."""
    part = f"part-{batch}"
    days = sorted(dt.date.fromisoformat(folder.name) for folder in staging.glob("*") if folder.is_dir())
    written = 0
    for day in days:
        frame = pl.read_parquet(staging / day.isoformat() / "*.parquet").sort(SORT_KEYS, nulls_last=True)
        repeats = pl.all_horizontal(pl.col(name).eq_missing(pl.col(name).shift(1)) for name in frame.columns)
        frame = frame.filter(~repeats)  # sorted on every column that varies: duplicates are neighbours
        with lake.lock("events", day):
            lake.write_partition("events", day, frame.select(EVENTS.names()), part)
        written += frame.height
    for day in set(_dates_with_part(lake, "events", part)) - set(days):
        with lake.lock("events", day):
            lake.remove_partition_file("events", day, part)
    return written, tuple(days)


def _write_quarantine(lake: Lake, day: dt.date, batch: str, rejects: pl.DataFrame) -> None:
    part = f"part-{batch}"
    with lake.lock("quarantine", day):
        if rejects.height:
            lake.write_partition("quarantine", day, rejects.sort("file", "line"), part)
        else:
            lake.remove_partition_file("quarantine", day, part)


def _dates_with_part(lake: Lake, table: str, part: str) -> list[dt.date]:
    paths = lake.fs.glob(f"{lake.table_dir(table)}/date=*/{part}.parquet")
    return [dt.date.fromisoformat(p.rsplit("/", 2)[-2].removeprefix("date=")) for p in paths]
