"""`clickstream ingest`: raw logs into canonical events in the lake, bad rows into the quarantine.

Guarantees
- Accounting: rows_read = rows_written + quarantined + duplicates, for every run. A row is a
  physical line of a text file (headers of CSV-with-header files excepted, blank lines
  included: they are quarantined as "blank line") or a row of a Parquet file.
- Batches: the files of one call form a batch whose id hashes the format and the real paths
  (`os.path.realpath`: `in/two.dat`, `in/sub/../two.dat` and a symbolic link to it are one file,
  and one file given twice is an InputError) of its log files; YOOCHOOSE buys files take no part,
  so clicks sent alone and later the same clicks with their buys are one batch, whose second
  delivery replaces the first (never doubling the clicks). Every row carries its batch id: its
  events land in `events` (date = UTC date of the event), its rejects in `quarantine` (date =
  ingestion date). Re-running a batch replaces exactly its own rows, on every date, in one Delta
  commit per table (other batches' rows stay): a kill at any instant leaves every date of the
  batch old or every date new, never a mix.
- Derived data: a re-delivered batch that no longer has events on some dates it had before
  reports them (`IngestSummary.dropped`, and the one-line summary names the sequences and scores
  to rebuild): their sequences now describe events that are gone, which `read_sequences` refuses
  until they are rebuilt (the nightly run rebuilds them itself).
- Same input, same output: rows are deduplicated (exact duplicates within the batch are
  dropped and counted) and sorted by all columns, session/cookie first, then time.
- Failure: past `settings.bad_row_threshold` (share of rows read that were quarantined) the
  run commits the quarantine, so the reasons can be inspected, but no events, and raises
  BadRowThresholdError. A file none of whose rows is valid is the wrong file (a YOOCHOOSE buys
  file given as clicks, say), not a few bad rows: the same, but an InputError naming it. An
  unreadable file raises InputError before anything is written.
- Memory: one chunk of input (see `raw_files`) at a time; valid events and rejects are spilled
  to a local scratch folder per chunk, by date and session bucket. The commit then streams the
  events date by date and bucket by bucket (one bucket-day of events in memory, to sort and
  deduplicate them), and the quarantine part by part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream.pipeline.core.buckets import bucket_of
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import BadRowThresholdError, InputError
from clickstream.pipeline.core.lake import Lake, batch_predicate
from clickstream.pipeline.core.progress import LiveStatus
from clickstream.pipeline.core.schemas import EVENTS, QUARANTINE, conform
from clickstream.pipeline.ingest.formats import input_format
from clickstream.pipeline.ingest.raw_fields import TimeWindow
from clickstream.pipeline.ingest.raw_files import ReadLimits, check_file
from clickstream.pipeline.ingest.session_keys import (
    rename_sessions,
    renamed_sessions,
    session_keys,
    stage_keys,
    staged_parts,
)

if TYPE_CHECKING:
    from clickstream.pipeline.ingest.raw_fields import ParsedChunk

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
    # dates the batch had events on before this delivery and has none on now: their sequences and
    # scores describe events that are gone, to be rebuilt (`rebuild`)
    dropped: tuple[dt.date, ...] = ()
    # sessions whose source id another session already has, renamed `<id>@<source>:<first date>`
    renamed: int = 0

    @property
    def rebuild(self) -> tuple[dt.date, dt.date] | None:
        """The dates whose sequences and scores the dropped dates make stale: from the day before
        the first to the day after the last (sessions cross midnight); None when none was dropped."""
        if not self.dropped:
            return None
        return self.dropped[0] - dt.timedelta(days=1), self.dropped[-1] + dt.timedelta(days=1)

    def __str__(self) -> str:
        span = f"{self.dates[0]}..{self.dates[-1]}" if self.dates else "none"
        share = self.quarantined / self.rows_read if self.rows_read else 0.0
        line = (
            f"ingested {self.files} {self.fmt} file(s) as batch {self.batch}: {self.rows_read:,} rows read, "
            f"{self.rows_written:,} written to {len(self.dates)} date(s) ({span}), "
            f"{self.quarantined:,} quarantined ({share:.2%}), {self.duplicates:,} duplicates dropped"
        )
        if self.renamed:
            line += f"; {self.renamed:,} session(s) reusing another's id renamed <id>@<source>:<first date>"
        if self.rebuild is None:
            return line
        first, last = self.rebuild
        return (
            f"{line}; {len(self.dropped)} date(s) no longer in this batch ({self.dropped[0]}..{self.dropped[-1]}): "
            f"rebuild their sequences and scores: clickstream sequences --start {first} --end {last}, "
            f"then clickstream score --start {first} --end {last}"
        )


def batch_id(fmt: str, files: Sequence[Path], buys: Sequence[Path] = ()) -> str:
    """A short id for this set of inputs: the same log files (by real path) give the same id. Buys
    files take no part (`buys` is accepted and ignored): they complete the clicks' outcome, so
    clicks re-sent with their buys re-deliver the batch of the clicks sent alone, replacing it."""
    del buys
    return _hashed(fmt, files, ())


def _hashed(fmt: str, files: Sequence[Path], buys: Sequence[Path]) -> str:
    names = [*sorted(os.path.realpath(p) for p in files), "--buys", *sorted(os.path.realpath(p) for p in buys)]
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
    files, buys = _check_request(fmt, [Path(p) for p in files], [Path(p) for p in buys])
    today = ingestion_date or dt.datetime.now(dt.UTC).date()
    lake = Lake(settings.lake, settings.buckets)
    batch, superseded = _batch_of(lake, fmt, files, buys)
    scratch = Path(settings.home) / "scratch"
    _remove_abandoned_scratch(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"ingest-{batch}-", dir=scratch))
    limits = ReadLimits(settings.max_line_bytes, settings.max_file_bytes, settings.max_gzip_ratio)
    read = input_format(fmt).reader()
    try:
        chunks = read(files, buys, TimeWindow.for_ingestion(today), limits)
        staged = _stage(chunks, staging, fmt, sorted({str(p) for p in [*files, *buys]}), lake.buckets)
        rows_read = staged.rows + staged.quarantined
        share = staged.quarantined / rows_read if rows_read else 0.0
        _commit_quarantine(lake, today, batch, staging / _REJECTS, staged)
        where = f"nothing written to events, see the quarantine rows of batch {batch} (date {today})"
        _check_no_wrong_file(staged, fmt, where)
        if share > settings.bad_row_threshold:
            worst, count = staged.bad_by_file.most_common(1)[0]
            raise BadRowThresholdError(
                f"{staged.quarantined:,} of {rows_read:,} rows ({share:.2%}) are bad, above the "
                f"{settings.bad_row_threshold:.2%} threshold (most in {worst}: {count:,}); {where}"
            )
        renamed = renamed_sessions(staged_parts(staging / _KEYS), _lake_keys(lake, [batch, *superseded]))
        written, dates, before = _commit_events(lake, batch, staging, rows_read, renamed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in superseded:  # an id of before buys stopped counting, re-delivered under the new one
        before |= _batch_dates(lake, "events", old)
        for table in ("quarantine", "events"):
            lake.commit(table, [], replace=batch_predicate(old), stage="ingest", metadata={"superseded_by": batch})
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
        dropped=tuple(sorted(before - set(dates))),
        renamed=renamed.select("session_id", "source", "new_id").n_unique(),
    )


def _batch_of(lake: Lake, fmt: str, files: Sequence[Path], buys: Sequence[Path]) -> tuple[str, list[str]]:
    """The batch id of these inputs, and the ids of earlier deliveries of the same batch to replace too.

    Before buys files stopped counting in the id, clicks with buys had an id of their own: a lake
    holding rows of that id only keeps it (replaced in the batch's one commit per table); one that
    also holds the clicks' id (clicks sent alone, then with buys, before this rule) gets the new id,
    and the old id's rows are removed after it."""
    batch = batch_id(fmt, files)
    if not buys:
        return batch, []
    old = _hashed(fmt, files, buys)
    if not any(_batch_dates(lake, table, old) for table in ("events", "quarantine")):
        return batch, []
    if any(_batch_dates(lake, table, batch) for table in ("events", "quarantine")):
        return batch, [old]
    return old, []


def _batch_dates(lake: Lake, table: str, batch: str, version: int | None = None) -> set[dt.date]:
    """The dates on which `table` holds rows of `batch` at `version` (default: latest), from the commit
    log's file statistics (every data file of these tables holds one batch)."""
    delta = lake.table(table, version)
    files = pl.DataFrame() if delta is None else pl.DataFrame(pa.table(delta.get_add_actions(flatten=True)))
    if files.is_empty() or "min.batch" not in files.columns:
        return set()
    mine = files.filter((pl.col("min.batch") == batch) & (pl.col("num_records") > 0))
    return set(mine.get_column("partition.date").cast(pl.Date).to_list())


# a scratch folder this old belongs to an ingest that was killed (longer than any task's timeout)
ABANDONED_AFTER_S = 24 * 3600.0


def _remove_abandoned_scratch(root: Path) -> None:
    """Delete the scratch folders of ingests that were killed before they could clean up."""
    cutoff = time.time() - ABANDONED_AFTER_S
    for folder in root.glob("ingest-*"):
        with contextlib.suppress(FileNotFoundError):  # another ingest's cleanup got there first
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _check_request(fmt: str, files: list[Path], buys: list[Path]) -> tuple[list[Path], list[Path]]:
    """The files as real paths (see the module docstring); InputError for a request that cannot run."""
    known = input_format(fmt)
    if not files:
        raise InputError("no input files given")
    if buys and not known.takes_buys:
        raise InputError(f"--buys applies to the yoochoose format only, not {fmt}")
    seen: dict[str, Path] = {}
    for path in [*files, *buys]:
        check_file(path)
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{path} and {seen[real]} are the same file ({real}); give it once")
        seen[real] = path
    return [Path(os.path.realpath(p)) for p in files], [Path(os.path.realpath(p)) for p in buys]


def _check_no_wrong_file(staged: _Staged, fmt: str, where: str) -> None:
    """InputError for the first file that gave rows but not one valid row."""
    for path, reasons in staged.reasons_by_file.items():
        if not staged.good_by_file[path]:
            hint = ""
            if input_format(fmt).takes_buys:
                hint = "; YOOCHOOSE clicks files are the arguments, buys files go after --buys"
            (reason, _), bad = reasons.most_common(1)[0], reasons.total()
            raise InputError(
                f"{path}: none of its {bad:,} rows is valid {fmt} input (most often: {reason}){hint}; {where}"
            )


# staging sub-folders: valid events per date, their chunks' constant columns, rejects per chunk
_EVENTS, _CONSTANTS, _REJECTS, _KEYS = "events", "constants", "rejects", "keys"


@dataclass
class _Staged:
    rows: int
    quarantined: int
    bad_by_file: Counter[str]
    good_by_file: Counter[str]
    reasons_by_file: dict[str, Counter[str]]


def _stage(
    chunks: Iterator[tuple[Path, ParsedChunk]], staging: Path, fmt: str, names: list[str], buckets: int
) -> _Staged:
    """Spread valid events over per-date and per-bucket staging files (of the lake's `buckets`) and
    rejects over per-chunk ones, named so that their name order is file (`names`, sorted) then line
    order."""
    rows, bad_by_file, good_by_file, reasons_by_file = 0, Counter(), Counter(), {}
    (staging / _REJECTS).mkdir(parents=True)
    (staging / _KEYS).mkdir()
    with LiveStatus("ingest", total=len(names), unit="files read") as status:
        for number, (path, parsed) in enumerate(chunks):
            rows += parsed.events.height
            good_by_file[str(path)] += parsed.events.height
            if parsed.rejects.height:
                bad_by_file[str(path)] += parsed.rejects.height
                counts = parsed.rejects.get_column("reason").value_counts()
                reasons_by_file.setdefault(str(path), Counter()).update(dict(counts.iter_rows()))
                rejects = conform(parsed.rejects.with_columns(file=pl.lit(str(path)), format=pl.lit(fmt)), QUARANTINE)
                rank = names.index(str(path))
                rejects.write_parquet(staging / _REJECTS / f"{rank:06d}-{number:06d}.parquet", compression="lz4")
            if parsed.events.height:
                _stage_events(parsed.events, staging, f"{number:06d}.arrow", buckets)
                stage_keys(session_keys(parsed.events), staging / _KEYS, f"{number:06d}")
            # chunks come file by file: the files before this chunk's are read whole
            status.update(completed=len(good_by_file) - 1, rows=rows + bad_by_file.total())
        status.update(completed=len(names))
    return _Staged(rows, bad_by_file.total(), bad_by_file, good_by_file, reasons_by_file)


def _stage_events(events: pl.DataFrame, staging: Path, name: str, buckets: int) -> None:
    """One chunk's events as `events/<date>/<bucket>/<name>` files of the columns that vary within the
    chunk and one `constants/<name>` row of those that do not (a YOOCHOOSE clicks chunk has one event
    type, no cookie, price or quantity): uncompressed Arrow IPC, the cheapest round trip, of half the
    bytes. The bucket is that of the source's session key (a session renamed later keeps it)."""
    constant = _constant_columns(events.drop("ts"))
    (staging / _CONSTANTS).mkdir(exist_ok=True)
    events.head(1).select(constant).write_ipc(staging / _CONSTANTS / name)
    keyed = events.with_columns(bucket_of(buckets), date=pl.col("ts").dt.date()).drop(constant)
    for (day, bucket), part in keyed.partition_by("date", "bucket", as_dict=True, include_key=False).items():
        folder = staging / _EVENTS / day.isoformat() / str(bucket)
        folder.mkdir(parents=True, exist_ok=True)
        part.write_ipc(folder / name, compression="uncompressed")


def _constant_columns(frame: pl.DataFrame) -> list[str]:
    """The columns with one value (or only nulls) in all of `frame`'s rows; a column whose first and
    last rows differ is ruled out without reading the rest."""
    ends = frame.select(pl.all().first().eq_missing(pl.all().last())).row(0, named=True)
    candidates = [column for column, same in ends.items() if same]
    if not candidates:
        return []
    same = frame.select(pl.col(candidates).eq_missing(pl.col(candidates).first()).all()).row(0, named=True)
    return [column for column, one_value in same.items() if one_value]


def _staged_events(
    folder: Path, chunk_constants: dict[str, dict[str, object]]
) -> tuple[pl.DataFrame, dict[str, object]]:
    """The events staged in `folder` (one date's of one bucket), chunk by chunk: the columns that vary
    within it, and the values of those that do not (constant in every chunk, with the same value),
    which need no sort. `chunk_constants`: each chunk's constant columns, by its file name
    (`_read_constants`)."""
    paths = sorted(folder.glob("*.arrow"))
    constants = [chunk_constants[path.name] for path in paths]
    shared = {
        name: value
        for name, value in constants[0].items()
        if all(name in other and other[name] == value for other in constants)  # None == None, too
    }
    parts = []
    for path, own in zip(paths, constants, strict=True):
        part = _read_ipc(path).with_columns(
            pl.lit(value, dtype=EVENTS[name]).alias(name) for name, value in own.items() if name not in shared
        )
        parts.append(part.select(name for name in EVENTS.names() if name not in shared))
    return pl.concat(parts), shared


def _read_constants(staging: Path) -> dict[str, dict[str, object]]:
    """Each staged chunk's constant columns and their values, by the chunk's file name."""
    return {path.name: _read_ipc(path).row(0, named=True) for path in (staging / _CONSTANTS).glob("*.arrow")}


def _read_ipc(path: Path) -> pl.DataFrame:
    """A staged Arrow file, its path taken literally: a home such as `state[1]` is no glob pattern."""
    return pl.scan_ipc(path, glob=False).collect()


def _lake_keys(lake: Lake, batches: list[str]) -> pl.LazyFrame | None:
    """The lake's events outside `batches` (the one being delivered, under every id it had)."""
    events = lake.scan("events")
    return None if events is None else events.filter(~pl.col("batch").is_in(batches))


def _commit_events(
    lake: Lake, batch: str, staging: Path, rows_read: int, renamed: pl.DataFrame
) -> tuple[int, tuple[dt.date, ...], set[dt.date]]:
    """Replace the batch's events with the staged ones, sessions `renamed`, deduplicated and sorted,
    in one commit streamed date by date and bucket by bucket (repeats share their session key, so
    their bucket); returns the rows written, their dates and the dates the batch had before."""
    days = sorted(dt.date.fromisoformat(folder.name) for folder in (staging / _EVENTS).glob("*"))
    chunk_constants = _read_constants(staging)
    written = 0

    def frames() -> Iterator[pl.DataFrame]:
        nonlocal written
        with LiveStatus("ingest", total=len(days), unit="days written") as status:
            for day in days:
                renamed_today = renamed.filter(pl.col("date") == day)
                for folder in sorted((staging / _EVENTS / day.isoformat()).iterdir(), key=lambda path: int(path.name)):
                    varying, constants = _staged_events(folder, chunk_constants)
                    varying = _renamed(varying, constants, renamed_today)
                    # the constant columns take no part in the order, nor in telling duplicates apart
                    frame = _drop_repeats(sort_events(varying)).with_columns(
                        pl.lit(value, dtype=EVENTS[name]).alias(name) for name, value in constants.items()
                    )
                    written += frame.height
                    yield frame.with_columns(batch=pl.lit(batch), bucket=pl.lit(int(folder.name)), date=pl.lit(day))
                    del varying, frame  # before the next bucket-day is read: memory holds one
                status.update(rows=written)

    meta = {"batch": batch, "rows_read": rows_read, "dates": len(days)}
    version = lake.commit("events", frames(), replace=batch_predicate(batch), stage="ingest", metadata=meta)
    # the version before this commit holds the batch's rows it replaced (another delivery of the
    # batch in between would have made this commit fail)
    return written, tuple(days), _batch_dates(lake, "events", batch, version - 1)


def _renamed(varying: pl.DataFrame, constants: dict[str, object], renamed: pl.DataFrame) -> pl.DataFrame:
    """One date's staged events with the new session ids of `renamed`; a key column constant over
    the date joins the varying ones (taken out of `constants`) when there is anything to rename."""
    if renamed.is_empty():
        return varying
    lifted = {name: constants.pop(name) for name in ("session_id", "source") if name in constants}
    return rename_sessions(
        varying.with_columns(pl.lit(value, dtype=EVENTS[name]).alias(name) for name, value in lifted.items()), renamed
    )


def sort_events(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` sorted on the SORT_KEYS it has (nulls last), in one thread: a date's events are too few
    for threads to pay. Session and time decide the order of almost every pair of events, so the sort
    is on them alone, and then each run of rows that tie on them is sorted on all the keys, in place:
    the order of one sort on all the keys, for a third less CPU (most of a sort's work is comparing
    keys)."""
    keys = [key for key in SORT_KEYS if key in frame.columns]
    lead = keys[: keys.index("ts") + 1]
    frame = frame.sort(lead, nulls_last=True, multithreaded=False, maintain_order=True)
    if len(lead) == len(keys):
        return frame
    tied = frame.select(pl.all_horizontal(pl.col(lead).eq_missing(pl.col(lead).shift(1)))).to_series()
    if not tied.any():
        return frame
    at = np.flatnonzero((tied | tied.shift(-1, fill_value=False)).to_numpy())  # each tie run, its first row too
    # the runs, in order of their lead keys, stay in their places: only each run's rows are reordered
    ties = frame[at].sort(keys, nulls_last=True, multithreaded=False)
    return pl.DataFrame([frame.get_column(name).scatter(at, ties.get_column(name)) for name in frame.columns])


def _drop_repeats(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` (sorted on all its columns, so that duplicates are neighbours) without the rows equal
    to the one before. Repeats share their timestamp, which few neighbours do: the timestamps rule
    most rows out before the other columns are compared."""
    same_ts = frame.select(pl.col("ts").eq_missing(pl.col("ts").shift(1))).to_series()
    if not same_ts.any():
        return frame
    repeats = frame.select(pl.all_horizontal(pl.all().eq_missing(pl.all().shift(1)))).to_series()
    return frame.filter(~repeats) if repeats.any() else frame


def _commit_quarantine(lake: Lake, day: dt.date, batch: str, staged: Path, counts: _Staged) -> None:
    """The staged rejects (file then line order, see `_stage`) as the batch's quarantine rows, dated
    `day`, replacing the batch's earlier ones whatever their date; streamed part by part."""
    frames = (
        pl.read_parquet(path, glob=False).with_columns(batch=pl.lit(batch), date=pl.lit(day))
        for path in sorted(staged.glob("*.parquet"))
    )
    meta = {"batch": batch, "rows": counts.quarantined}
    lake.commit("quarantine", frames, replace=batch_predicate(batch), stage="ingest", metadata=meta)
