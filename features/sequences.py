"""events/ -> sequences/: one row per session with its input events as list columns.

A session belongs to the UTC date of its first event (of any type): the `date` partition of
the `sequences` table, rows sorted by (session_start, session_id). Building dates [start, end]
reads events of start - 1 (a cookie session begun the day before is not cut in two) through
end + 1 (a session crossing midnight is complete), all at one version of `events`, and replaces
the range's sequences in one commit that records that version.

Buckets: sessions never cross buckets (`pipeline.core.buckets`), so each bucket is built from its own
events alone, one bucket after another (memory: one bucket's events of a few days), and a run for
one bucket (the DAG's mapped tasks) replaces only that bucket's partitions of the range.

Labels, without leakage:
- YOOCHOOSE sessions are buyers when they hold any purchase; the input is their clicks,
  purchases removed.
- Cookie-log sessions are buyers when they hold a purchase; the purchase and every event
  at or after the first purchase leave the input.
- The label is null when unknown: an event came without its outcome (``labelled`` False),
  or a cookie-log session without a purchase may still be open (its last event is within
  the session gap of the newest event read).
Sessions left with no input event (a purchase first, or only excluded event types) are
dropped and counted. Longer sessions keep their last `max_events` input events.

Per-event features are computed on a session's whole input sequence before truncation:
the log1p gap in seconds to the previous input event (0 for the first), the log1p dwell to
the next one (0 and dwell_known False for the last: the time to a purchase would leak).
The whole step is vectorised: sessions are runs of a sorted flat event table, list columns
are built from their offsets, no Python runs per session or event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream.features.sessionize import sessionize
from clickstream.pipeline.core.config import SequenceConfig, Settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.core.progress import LiveStatus
from clickstream.pipeline.core.schemas import EVENT_TYPE_CODE, SEQUENCES, UTC_TS, conform

# Days are built in batches of consecutive dates holding at most this many events,
# which bounds memory whatever the size of the window. Smaller batches also keep the
# per-event arrays small enough for the allocator to reuse their memory instead of mapping
# fresh pages (on the benchmark machine 4M events build 15% faster than 8M, in 1.7 GiB not 2.7).
BATCH_EVENTS = 4_000_000

_US_PER_DAY = 86_400 * 10**6
_NEVER = np.iinfo(np.int64).max
_ORDER = ("session_start", "session_id")  # the row order of sequences/
_LIST_COLUMNS = ("item_id", "category", "event_type", "log_gap_prev", "log_dwell", "dwell_known")


@dataclass
class SequenceSummary:
    """What a `build_sequences` run wrote."""

    dates: list[dt.date] = field(default_factory=list)
    sessions: int = 0
    events: int = 0  # input events written (after leakage removal and truncation)
    buyers: int = 0
    unknown_labels: int = 0
    truncated: int = 0
    dropped_empty: int = 0  # sessions without any input event (purchase first, or all excluded)

    def add(self, other: SequenceSummary) -> None:
        self.dates = sorted({*self.dates, *other.dates})
        for name in ("sessions", "events", "buyers", "unknown_labels", "truncated", "dropped_empty"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def __str__(self) -> str:
        span = f"{self.dates[0]}..{self.dates[-1]}" if self.dates else "no dates"
        return (
            f"sequences {span} ({len(self.dates)} dates): {self.sessions:,} sessions, {self.events:,} events, "
            f"{self.buyers:,} buyers, {self.unknown_labels:,} unknown labels, {self.truncated:,} truncated, "
            f"{self.dropped_empty:,} dropped without input events"
        )


def build_sequences(
    settings: Settings, start: dt.date | None, end: dt.date | None, bucket: int | None = None
) -> SequenceSummary:
    """Replace the sequences of [start, end] (default: the whole table) of `bucket` (default: every
    bucket, one after another) with those of the events of that range, in one commit.

    Idempotent: each date gets the same rows for the same events, whatever range it is built in;
    a date whose events are gone loses its sequences (derived data never outlives its source).
    Raises NoDataError when neither events nor sequences hold a date in the range.
    """
    lake = Lake(settings.lake, settings.buckets)
    events_version = lake.version("events")
    known = {*lake.dates("events", events_version), *lake.dates("sequences")}
    days = sorted(d for d in known if _within(d, start, end))
    if not days:  # neither events nor sequences (stale ones, to be cleared) in the range
        lake.require_dates("events", start, end, "run `clickstream ingest` first")  # raises, naming the window
    buckets = range(lake.buckets) if bucket is None else [lake.check_bucket(bucket)]
    summary = SequenceSummary()
    newest_of: dict[tuple[dt.date, dt.date], int] = {}

    def frames() -> Iterator[pl.DataFrame]:
        todo = {part: _events_within(lake, events_version, part, start, end) for part in buckets}
        with LiveStatus("sequences", total=sum(sum(rows.values()) for rows in todo.values()), unit="events") as status:
            for part, rows in todo.items():
                for batch in _batches(rows):
                    around = (batch[0] - dt.timedelta(days=1), batch[-1] + dt.timedelta(days=1))
                    events = _read_events(lake, *around, events_version, part)
                    if around not in newest_of:  # of every bucket: a bucket's own would differ
                        newest_of[around] = _newest(lake, *around, events_version)
                    newest = newest_of[around]
                    frame, counts = sessions_of(events, batch[0], batch[-1], settings.sequences, newest)
                    start_day = frame.get_column("session_start").to_physical().to_numpy() // _US_PER_DAY
                    for day in batch:  # rows are sorted by session_start: each day is one slice
                        lo, hi = np.searchsorted(start_day, [_epoch_day(day), _epoch_day(day) + 1])
                        yield _unsliced(frame.slice(lo, hi - lo)).with_columns(date=pl.lit(day), bucket=pl.lit(part))
                    counts.dates = list(batch)
                    summary.add(counts)
                    status.update(sum(rows[day] for day in batch), sessions=summary.sessions)
                    del events, frame  # before the next batch is read: memory holds one batch of one bucket

    first, last = start or days[0], end or days[-1]
    whole = start is None and end is None and bucket is None
    replace = None if whole else dates_predicate(first, last, bucket)
    meta = {"events_version": events_version, "first_date": first, "last_date": last, "bucket": bucket}
    lake.commit("sequences", frames(), replace=replace, stage="sequences", metadata=meta)
    return summary


def _within(day: dt.date, start: dt.date | None, end: dt.date | None) -> bool:
    return (start is None or day >= start) and (end is None or day <= end)


def _events_within(
    lake: Lake, version: int | None, bucket: int, start: dt.date | None, end: dt.date | None
) -> dict[dt.date, int]:
    """The events of each date of `bucket` in [start, end], from the commit log (no data read)."""
    return {day: n for day, n in lake.rows_per_date("events", version, bucket).items() if _within(day, start, end)}


def read_sequences(
    lake: Lake,
    start: dt.date | None,
    end: dt.date | None,
    columns: Iterable[str] | None = None,
    version: int | None = None,
    bucket: int | None = None,
) -> pl.DataFrame:
    """Sessions starting in [start, end] (default: all) of `bucket` (default: all) at table `version` (default: latest),
    sorted by (session_start, session_id), with the SEQUENCES columns, or only those of them
    named in `columns` (in SEQUENCES order); an empty frame when there are none.

    The latest sequences are refused (NoDataError naming the rebuild) on any date of the range
    whose events are gone (`stale_dates`): training and scoring never use sessions of events that
    no longer exist. An older `version` (time travel) is read as it was.
    """
    wanted = set(SEQUENCES.names() if columns is None else columns)
    if wanted - set(SEQUENCES.names()):
        raise ValueError(f"not SEQUENCES columns: {sorted(wanted - set(SEQUENCES.names()))}")
    if version is None or version == lake.version("sequences"):
        refuse_stale(lake, start, end)
    names = [name for name in SEQUENCES.names() if name in wanted]
    schema = pl.Schema({name: SEQUENCES[name] for name in SEQUENCES.names() if name in {*names, *_ORDER}})
    scan = lake.scan("sequences", start, end, version, bucket)
    if scan is None:
        return pl.DataFrame(schema=schema).select(names)
    frame = conform(scan.select(schema.names()).collect(), schema)
    return (frame if _in_session_order(frame) else frame.sort(*_ORDER)).select(names)


def stale_dates(lake: Lake, start: dt.date | None = None, end: dt.date | None = None) -> list[dt.date]:
    """The dates in [start, end] (default: all) of the latest sequences on which `events` holds no
    row: their sessions were built from events that are gone since (a re-delivered batch that no
    longer has the date, a restored older version). A session's date is the date of its first
    event, so sequences of a date without events cannot be current. None while `events` was never
    written (sequences written directly, e.g. synthetic ones)."""
    have = set(lake.dates("events"))
    if not have and lake.version("events") is None:  # never written: nothing to compare with
        return []
    return [day for day in lake.dates("sequences") if _within(day, start, end) and day not in have]


def rebuild_range(days: Iterable[dt.date]) -> tuple[dt.date, dt.date] | None:
    """The dates whose sequences change when the events of `days` change: from the day before the
    first (its sessions may run into it) to the day after the last (a session begun on a changed day
    may have held its events); None for no days."""
    days = sorted(days)
    return (days[0] - dt.timedelta(days=1), days[-1] + dt.timedelta(days=1)) if days else None


def refuse_stale(lake: Lake, start: dt.date | None, end: dt.date | None) -> None:
    stale = stale_dates(lake, start, end)
    if stale:
        first, last = rebuild_range(stale) or (stale[0], stale[-1])
        raise NoDataError(
            f"sequences of {stale[0]}..{stale[-1]} ({len(stale)} date(s)) in lake {lake} were built from events that "
            f"are gone; rebuild them first: clickstream sequences --start {first} --end {last}"
        )


def _in_session_order(frame: pl.DataFrame) -> bool:
    """Whether rows are sorted by (session_start, session_id): partitions are written that way
    and read in date order, so checking is much cheaper than sorting the list columns again."""
    start = frame.get_column("session_start").to_physical().to_numpy()
    if np.any(start[1:] < start[:-1]):
        return False
    tied = np.flatnonzero(start[1:] == start[:-1])
    session_id = frame.get_column("session_id")
    return bool((session_id.gather(tied) < session_id.gather(tied + 1)).all())


def sessions_of(
    events: pl.DataFrame, first_day: dt.date, last_day: dt.date, config: SequenceConfig, newest: int | None = None
) -> tuple[pl.DataFrame, SequenceSummary]:
    """SEQUENCES rows of the sessions whose first event falls on [first_day, last_day], sorted
    by (session_start, session_id), with their counts.

    `events` holds EVENTS columns (any row order); it should include the day before and the
    day after, so that sessions are whole. The newest event read (`newest`, epoch microseconds;
    default: that of `events`) decides which cookie-log sessions may still be open.
    """
    ev = _coded(events)
    grouped = sessionize(ev, config.session_gap_minutes)
    first, lengths = grouped.offsets[:-1], np.diff(grouped.offsets)
    of_event = np.repeat(np.arange(first.size), lengths)
    # every per-event array below is in session order (grouped.rows), not in the frame's row order
    ts = ev.get_column("ts").to_physical().to_numpy()[grouped.rows]
    code = ev.get_column("event_type").to_numpy()[grouped.rows]
    purchase = code == EVENT_TYPE_CODE["purchase"]
    start, end = ts[first], ts[first + lengths - 1]
    first_purchase = np.minimum.reduceat(np.where(purchase, ts, _NEVER), first) if ts.size else start
    labelled = ev.get_column("labelled").fill_null(False).to_numpy()[grouped.rows]
    labelled = np.minimum.reduceat(labelled, first) if ts.size else start
    yoochoose = (ev.get_column("source").gather(grouped.first_rows) == "yoochoose").to_numpy()
    start_day = start // _US_PER_DAY
    in_window = (start_day >= _epoch_day(first_day)) & (start_day <= _epoch_day(last_day))

    # input events: no purchase, nothing excluded; event logs also drop everything from the first purchase on
    excluded = [EVENT_TYPE_CODE[name] for name in config.exclude_event_types]
    keep = ~purchase & ~np.isin(code, excluded) & in_window[of_event]
    keep &= yoochoose[of_event] | (ts < first_purchase[of_event])
    inputs = np.flatnonzero(keep)
    n_input = np.bincount(of_event[inputs], minlength=first.size)
    log_gap_prev, log_dwell, dwell_known = _gap_features(ts[inputs], of_event[inputs])
    kept = _last_events(of_event[inputs], n_input, config.max_events)

    # sessions in output order: (session_start, session_id)
    chosen = np.flatnonzero(n_input > 0)
    order = (
        pl.DataFrame({"start": start[chosen], "session_id": grouped.session_id.gather(chosen)})
        .with_row_index()
        .sort("start", "session_id")
        .get_column("index")
        .to_numpy()
    )
    sessions = chosen[order]
    n_events = np.minimum(n_input, config.max_events)[sessions]
    offsets = np.zeros(sessions.size + 1, dtype=np.int64)
    np.cumsum(n_events, out=offsets[1:])
    # position of each output event among the kept inputs, which are in session order
    kept_offsets = np.zeros(first.size + 1, dtype=np.int64)
    np.cumsum(np.minimum(n_input, config.max_events), out=kept_offsets[1:])
    flat = np.repeat(kept_offsets[sessions] - offsets[:-1], n_events) + np.arange(offsets[-1])
    at = kept[flat]  # position of each output event among the inputs
    event_rows = grouped.rows[inputs[at]]  # its row in `events`

    label = ~np.equal(first_purchase, _NEVER)
    if newest is None:
        newest = int(ts.max()) if ts.size else 0
    gap_us = round(config.session_gap_minutes * 60e6)
    known = labelled.astype(bool) & (yoochoose | label | (end <= newest - gap_us))
    label_values = pa.array(label[sessions], mask=~known[sessions])

    session_rows = grouped.first_rows[sessions]
    frame = pl.DataFrame(
        {
            "session_id": grouped.session_id.gather(sessions),
            "cookie_id": ev.get_column("cookie_id").gather(session_rows),
            "session_start": pl.Series(start[sessions]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "session_end": pl.Series(end[sessions]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "n_events": n_events.astype(np.int32),
            "n_events_total": lengths[sessions].astype(np.int32),
            "truncated": n_input[sessions] > config.max_events,
            "label": pl.Series(label_values, dtype=pl.Boolean),
            "source": ev.get_column("source").gather(session_rows),
            "start_hour": ((start[sessions] // 3_600_000_000) % 24).astype(np.int8),
            "start_weekday": ((start_day[sessions] + 3) % 7 + 1).astype(np.int8),  # 1970-01-01 was a Thursday
            "item_id": _lists(ev.get_column("item_id").gather(event_rows), offsets),
            "category": _lists(ev.get_column("category").gather(event_rows), offsets),
            "event_type": _lists(pl.Series(code[inputs[at]]), offsets),
            "log_gap_prev": _lists(pl.Series(log_gap_prev[at]), offsets),
            "log_dwell": _lists(pl.Series(log_dwell[at]), offsets),
            "dwell_known": _lists(pl.Series(dwell_known[at]), offsets),
        }
    )
    counts = SequenceSummary(
        sessions=frame.height,
        events=int(offsets[-1]),
        buyers=int((label & known)[sessions].sum()),
        unknown_labels=int((~known)[sessions].sum()),
        truncated=int((n_input[sessions] > config.max_events).sum()),
        dropped_empty=int((in_window & (n_input == 0)).sum()),
    )
    return conform(frame, SEQUENCES), counts


def _gap_features(ts: np.ndarray, session: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log_gap_prev, log_dwell, dwell_known) of events given in session runs, time order within each run."""
    same_as_previous = np.zeros(ts.size, dtype=bool)
    same_as_previous[1:] = session[1:] == session[:-1]
    log_gap = np.zeros(ts.size, dtype=np.float32)
    seconds = np.maximum(np.diff(ts), 0).astype(np.float32) * np.float32(1e-6)  # < 0 only across sessions
    log_gap[1:] = np.log1p(seconds)
    log_gap[~same_as_previous] = 0.0
    # the dwell on an event is the gap before the next one: 0 where the next event starts another session
    return log_gap, np.append(log_gap[1:], np.float32(0.0)), np.append(same_as_previous[1:], False)


def _last_events(session: np.ndarray, n_input: np.ndarray, max_events: int) -> np.ndarray:
    """Indices of the events (in session runs) among the last `max_events` of their session."""
    if n_input.max(initial=0) <= max_events:
        return np.arange(session.size)
    ends = np.cumsum(n_input)  # one past each session's last event
    return np.flatnonzero(ends[session] - np.arange(session.size) <= max_events)


def _coded(events: pl.DataFrame) -> pl.DataFrame:
    """Event types as EVENT_TYPE_CODE, item and category ids as Categorical (the SEQUENCES types)."""
    return events.with_columns(
        pl.col("event_type").replace_strict(EVENT_TYPE_CODE, default=EVENT_TYPE_CODE["other"], return_dtype=pl.Int8),
        pl.col("item_id", "category").cast(pl.Categorical),
    )


def _read_events(lake: Lake, first_day: dt.date, last_day: dt.date, version: int | None, bucket: int) -> pl.DataFrame:
    scan = lake.scan("events", first_day, last_day, version, bucket)
    assert scan is not None  # the caller only asks for ranges around dates that hold events
    return scan.select(
        "session_id",
        "cookie_id",
        pl.col("ts").cast(UTC_TS),
        "event_type",
        pl.col("item_id", "category").cast(pl.Categorical),  # while reading, not after: cheaper than strings
        "source",
        "labelled",
    ).collect()


def _newest(lake: Lake, first_day: dt.date, last_day: dt.date, version: int | None) -> int:
    """The newest event of [first_day, last_day] in every bucket, epoch microseconds (0: none)."""
    scan = lake.scan("events", first_day, last_day, version)
    if scan is None:
        return 0
    newest = scan.select(pl.col("ts").cast(UTC_TS).to_physical().max()).collect().item()
    return 0 if newest is None else int(newest)


def _batches(rows: dict[dt.date, int]) -> list[list[dt.date]]:
    """Consecutive runs of the dates of `rows` (events per date) holding at most BATCH_EVENTS
    events each (a bigger day alone)."""
    batches: list[list[dt.date]] = []
    size = 0
    for day, count in rows.items():
        if not batches or size + count > BATCH_EVENTS:
            batches.append([])
            size = 0
        batches[-1].append(day)
        size += count
    return batches


def _unsliced(part: pl.DataFrame) -> pl.DataFrame:
    """`part` with list columns that hold only their own values: polars writes a slice of a list
    column in time proportional to the whole column, which would make a batch's writes quadratic."""
    offsets = np.zeros(part.height + 1, dtype=np.int64)
    np.cumsum(part.get_column("n_events").to_numpy(), out=offsets[1:])
    return part.with_columns(_lists(part.get_column(c).explode(empty_as_null=False), offsets) for c in _LIST_COLUMNS)


def _lists(values: pl.Series, offsets: np.ndarray) -> pl.Series:
    """A list column whose row i holds values[offsets[i]:offsets[i + 1]] (no copy per row).
    Categorical values travel as their category numbers: through Arrow they would be
    dictionary-encoded and decoded again, each time."""
    flat = (values.to_physical() if values.dtype == pl.Categorical else values).to_arrow(
        compat_level=pl.CompatLevel.newest()
    )
    lists = pl.Series(values.name, pa.LargeListArray.from_arrays(pa.array(offsets), flat))
    return lists.list.eval(pl.element().cat.to(values.dtype)) if values.dtype == pl.Categorical else lists


def _epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days
