"""Vectorised parsers and checks for raw string fields, shared by the format readers.

Each parser takes a String expression and returns the typed value, null where the text
does not parse; a reader pairs them with quarantine reasons via `first_reason`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from clickstream.pipeline.core.schemas import EVENTS, UTC_TS, conform
from clickstream.pipeline.ingest.raw_files import LineChunk, ReadLimits, SplitLines

EARLIEST_EVENT = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
MAX_ID_DIGITS = 18  # every id of up to 18 digits fits a signed 64-bit integer


@dataclass(frozen=True)
class TimeWindow:
    """Timestamps an ingest accepts: from 1990 to the end of the day after the ingestion date."""

    earliest: dt.datetime
    latest: dt.datetime  # exclusive

    @classmethod
    def for_ingestion(cls, ingestion_date: dt.date) -> TimeWindow:
        end = dt.datetime.combine(ingestion_date + dt.timedelta(days=2), dt.time(), tzinfo=dt.UTC)
        return cls(EARLIEST_EVENT, end)

    def excludes(self, ts: pl.Expr) -> pl.Expr:
        return (ts < self.earliest) | (ts >= self.latest)


def first_reason(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The reason of the first check that holds (checks are "this row is bad" conditions), else null."""
    reason = pl.lit(None, dtype=pl.String)
    for bad, text in reversed(checks):
        reason = pl.when(bad).then(pl.lit(text)).otherwise(reason)
    return reason


def is_numeric_id(text: pl.Expr) -> pl.Expr:
    """Digits only, at most MAX_ID_DIGITS of them: a non-negative id that fits int64 (null for null)."""
    return _is_digits(text, text.cast(pl.UInt64, strict=False)) & (text.str.len_bytes() <= MAX_ID_DIGITS)


def is_yoochoose_category(text: pl.Expr) -> pl.Expr:
    """YOOCHOOSE's category: `S`, `0` to `12`, or a brand id of 8 to 10 digits (null for null)."""
    digits, value = text.str.len_bytes(), text.cast(pl.UInt64, strict=False)
    brand_or_number = (digits == 1) | ((digits == 2) & value.is_between(10, 12)) | digits.is_between(8, 10)
    return (text == "S") | (_is_digits(text, value) & brand_or_number)


def _is_digits(text: pl.Expr, value: pl.Expr) -> pl.Expr:
    """One or more ASCII digits, nothing else, given `value`, the text's unsigned cast: the cast reads
    exactly these, a leading "+" aside (and up to 20 digits), at a third of the CPU of a regex."""
    return pl.when(text.is_not_null()).then(value.is_not_null() & ~text.str.starts_with("+"))


def iso_timestamp(text: pl.Expr) -> pl.Expr:
    """ISO-8601 with "Z" or a UTC offset (fraction optional) as UTC microseconds."""
    return text.str.replace(r"Z$", "+00:00").str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%z", time_unit="us", time_zone="UTC", strict=False
    )


ZULU_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
ZULU_MILLIS = np.frombuffer(b"0000-00-00T00:00:00.000Z", dtype=np.uint8)  # the one layout of the fast path
_DIGITS = np.equal(ZULU_MILLIS, ord("0"))
ZULU_BLOCK = 1 << 17  # texts per block of `_fixed_width_micros`: 3 MiB of bytes
_FIELDS = {"year": (0, 4), "month": (5, 7), "day": (8, 10), "hour": (11, 13), "minute": (14, 16),
           "second": (17, 19), "milli": (20, 23)}  # fmt: skip


def zulu_timestamp(text: pl.Expr) -> pl.Expr:
    """YOOCHOOSE's `2014-04-07T10:51:09.277Z` (fraction optional) as UTC microseconds: the
    values of polars' `to_datetime` with ZULU_FORMAT, null where that gives null."""
    return text.map_batches(_zulu_values, return_dtype=UTC_TS, is_elementwise=True)


def _zulu_values(text: pl.Series) -> pl.Series:
    """Texts of exactly the ZULU_MILLIS layout with an in-range date and time are read as fixed-width
    digits (numpy over their bytes); the others, rare in real logs, go through `to_datetime`."""
    fixed = (text.str.len_bytes() == len(ZULU_MILLIS)).fill_null(False).to_numpy()
    array = (text if fixed.all() else text.filter(fixed)).to_arrow(compat_level=pl.CompatLevel.oldest())
    first, last = np.frombuffer(array.buffers()[1], dtype=np.int64)[[array.offset, array.offset + len(array)]]
    # large_string: every text of the same length, so their bytes form a (texts x layout) block, not copied
    layout = np.frombuffer(array.buffers()[2] or b"", dtype=np.uint8)[first:last].reshape(-1, len(ZULU_MILLIS))
    values, is_fast = _fixed_width_micros(layout)
    if not fixed.all():
        values, is_fast = _spread(values, fixed, 0), _spread(is_fast, fixed, False)
    parsed = pl.Series(text.name, values, dtype=pl.Int64).cast(UTC_TS)
    if is_fast.all():
        return parsed
    slow = pl.Series(~is_fast)
    others = text.filter(slow).str.to_datetime(ZULU_FORMAT, time_unit="us", time_zone="UTC", strict=False)
    return parsed.scatter(np.flatnonzero(~is_fast), others)


def _spread(values: np.ndarray, where: np.ndarray, fill: object) -> np.ndarray:
    """`values` at the True positions of the mask `where`, `fill` elsewhere."""
    out = np.full(len(where), fill, dtype=values.dtype)
    out[where] = values
    return out


def _fixed_width_micros(layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch microseconds of the ZULU_MILLIS texts in `layout` (one row of bytes per text), and
    whether each is valid: digits and separators in place, a real calendar date, a time of day
    below 24:00:00 (a leap second `:60` is left to the slow path). Block by block: the thirty or
    so passes over a block's bytes then stay in the CPU caches (twice as fast as over a whole chunk)."""
    blocks = [_block_micros(layout[i : i + ZULU_BLOCK]) for i in range(0, len(layout), ZULU_BLOCK)]
    if not blocks:
        return _block_micros(layout)
    return np.concatenate([micros for micros, _ in blocks]), np.concatenate([ok for _, ok in blocks])


def _block_micros(layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    digits = layout - np.uint8(ord("0"))
    ok = np.ones(len(layout), dtype=bool)
    for position, expected in enumerate(ZULU_MILLIS.tolist()):
        ok &= digits[:, position] <= 9 if _DIGITS[position] else layout[:, position] == expected
    field = {}
    for name, (start, end) in _FIELDS.items():
        value = digits[:, start].astype(np.int32)
        for position in range(start + 1, end):
            value = value * 10 + digits[:, position]
        field[name] = value
    month = np.minimum(field["year"] * 12 + field["month"] - 1, len(_MONTH_DAYS) - 1)  # 9999-13 is no month
    ok &= (field["month"] >= 1) & (field["month"] <= 12) & (field["day"] >= 1) & (field["day"] <= _MONTH_DAYS[month])
    ok &= (field["hour"] < 24) & (field["minute"] < 60) & (field["second"] < 60)
    day = _MONTH_START[month] + (field["day"] - 1)
    seconds = day * 86_400 + (field["hour"] * 3600 + field["minute"] * 60 + field["second"])
    return (seconds * 1000 + field["milli"]) * 1000, ok


def _month_table() -> tuple[np.ndarray, np.ndarray]:
    """For month index `year * 12 + month - 1` of years 0..9999: its first day (days since 1970-01-01)
    and its number of days (a lookup, so the fast path never converts dates one by one)."""
    months = np.arange(10_000 * 12 + 1) - 1970 * 12
    starts = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    return starts[:-1], np.diff(starts)


_MONTH_START, _MONTH_DAYS = _month_table()


def epoch_ms_timestamp(text: pl.Expr) -> pl.Expr:
    """Integer epoch milliseconds (up to 15 digits, optionally negative) as UTC microseconds."""
    millis = pl.when(text.str.contains(r"^-?[0-9]{1,15}$")).then(text.str.to_integer(strict=False))
    return (millis * 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(UTC_TS)


def event_timestamp(text: pl.Expr) -> pl.Expr:
    """An event log's `ts`: epoch milliseconds or ISO-8601 with an offset."""
    return pl.coalesce(epoch_ms_timestamp(text), iso_timestamp(text))


def price(text: pl.Expr) -> pl.Expr:
    """A non-negative decimal price; 0 means unknown and becomes null (as does bad text)."""
    value = pl.when(text.str.contains(r"^[0-9]{1,15}(\.[0-9]{1,9})?$")).then(text.cast(pl.Float64, strict=False))
    return pl.when(value > 0).then(value)


def quantity(text: pl.Expr) -> pl.Expr:
    """A non-negative integer quantity; 0 means unknown and becomes null (as does bad text)."""
    value = pl.when(text.str.contains(r"^[0-9]{1,9}$")).then(text.str.to_integer(strict=False)).cast(pl.Int32)
    return pl.when(value > 0).then(value)


def is_bad_optional(text: pl.Expr, parsed: pl.Expr, zero: pl.Expr) -> pl.Expr:
    """Text is present but did not parse (a parsed null is fine when the text meant 0 = unknown)."""
    return text.is_not_null() & parsed.is_null() & ~zero


def is_zero(text: pl.Expr) -> pl.Expr:
    return text.str.contains(r"^0+(\.0+)?$")


def file_by_file(
    read: Callable[[Path, TimeWindow, ReadLimits], Iterator[ParsedChunk]],
    files: list[Path],
    window: TimeWindow,
    limits: ReadLimits,
) -> Iterator[tuple[Path, ParsedChunk]]:
    """Each file's parsed chunks, paired with the file, files in the order given."""
    for path in files:
        for parsed in read(path, window, limits):
            yield path, parsed


@dataclass(frozen=True)
class ParsedChunk:
    """What a reader makes of a chunk: canonical events (EVENTS columns) and rejected rows."""

    events: pl.DataFrame
    rejects: pl.DataFrame  # line, raw, reason


def raw(name: str) -> pl.Expr:
    """A row's raw text field `name` (as split from the line), null when empty."""
    return pl.col(f"raw_{name}")


def validate(
    rows: pl.DataFrame,
    values: dict[str, pl.Expr],
    checks: list[tuple[pl.Expr, str]],
    *,
    source: str,
    labelled: bool,
    raw_text: Callable[[pl.DataFrame], pl.Series],
    naming_only: frozenset[str] = frozenset(),
) -> ParsedChunk:
    """Split parsed rows into canonical events and rejects.

    `rows` holds `line` and one String column per field; `values` computes EVENTS columns
    from `raw(field)`; `checks` (which may use both) give each bad row its first reason;
    `raw_text` renders the bad rows' original text. Both outputs keep the rows' order.
    Reasons are worked out for the bad rows only. The checks with a reason in `naming_only`
    hold only for rows a later check finds bad too (a header line's session id is no number):
    they name the reason but are left out of the test for bad rows, so they cost nothing on
    good ones.
    """
    frame = rows.rename(lambda name: name if name == "line" else f"raw_{name}").with_columns(**values)
    is_bad = pl.any_horizontal(bad for bad, text in checks if text not in naming_only).fill_null(False)  # as when()
    bad_rows = frame.select(is_bad).to_series()
    good, bad = (frame.filter(~bad_rows), frame.filter(bad_rows)) if bad_rows.any() else (frame, frame.clear())
    bad = bad.with_columns(first_reason(checks).alias("reason"))
    rejects = bad.select("line", raw_text(bad).alias("raw"), "reason")
    constants = {"source": pl.lit(source), "labelled": pl.lit(labelled)}
    missing = [
        constants.get(name, pl.lit(None, dtype=dtype)).alias(name)
        for name, dtype in EVENTS.items()
        if name not in values
    ]
    return ParsedChunk(conform(good.with_columns(missing), EVENTS), rejects)


def validate_lines(
    chunk: LineChunk,
    split: SplitLines,
    values: dict[str, pl.Expr],
    checks: list[tuple[pl.Expr, str]],
    *,
    source: str,
    labelled: bool,
    naming_only: frozenset[str] = frozenset(),
) -> ParsedChunk:
    """`validate` for the rows of a chunk of lines; rejects of both steps, in line order."""

    def line_text(bad: pl.DataFrame) -> pl.Series:
        keep = np.zeros(len(chunk), dtype=bool)
        keep[bad["line"].to_numpy() - chunk.first_line] = True
        return chunk.texts(keep)

    parsed = validate(
        split.rows, values, checks, source=source, labelled=labelled, raw_text=line_text, naming_only=naming_only
    )
    if not split.rejects.height:
        return parsed
    return ParsedChunk(parsed.events, pl.concat([split.rejects, parsed.rejects]).sort("line"))
