"""Cookie event logs: JSON Lines, CSV with a header, or Parquet (by extension, each optionally .gz).

Fields: `cookie_id`, `ts` (ISO-8601 with "Z" or an offset, or integer epoch milliseconds),
`event_type`, `item_id`, and optional `category`, `price`, `quantity`, `session_id`; other
fields are ignored. Event types other than the canonical ones become "other"; price and
quantity 0 mean unknown. A Parquet row's "line" is its 1-based row number and its raw text
the row as JSON.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.core.schemas import EVENT_TYPES
from clickstream.pipeline.ingest.raw_fields import (
    ParsedChunk,
    TimeWindow,
    event_timestamp,
    is_bad_optional,
    is_zero,
    price,
    quantity,
    raw,
    validate,
    validate_lines,
)
from clickstream.pipeline.ingest.raw_files import OK, SplitLines, iter_line_chunks, split_fields

SOURCE = "events"
REQUIRED = ("cookie_id", "ts", "event_type", "item_id")
OPTIONAL = ("category", "price", "quantity", "session_id")
KINDS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS = 1_000_000


def read_event_log(path: Path, window: TimeWindow) -> Iterator[ParsedChunk]:
    """An event log as canonical events, chunk by chunk in file order."""
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    kind = KINDS.get(suffixes[0].lower()) if suffixes else None
    if kind is None:
        known = ", ".join(KINDS)
        raise InputError(f"{path}: cannot tell the event-log format from its name (expected {known}, optionally .gz)")
    reader = {"json": _read_json_lines, "csv": _read_csv, "parquet": _read_parquet}[kind]
    yield from reader(path, window)


def event_values() -> dict[str, pl.Expr]:
    """Canonical columns from the raw fields of an event log (also used for Retailrocket)."""
    kind = raw("event_type").str.to_lowercase()
    return {
        "session_id": raw("session_id"),
        "cookie_id": raw("cookie_id"),
        "ts": event_timestamp(raw("ts")),
        "event_type": pl.when(kind.is_in(EVENT_TYPES)).then(kind).otherwise(pl.lit("other")),
        "item_id": raw("item_id"),
        "category": raw("category"),
        "price": price(raw("price")),
        "quantity": quantity(raw("quantity")),
    }


def event_checks(window: TimeWindow) -> list[tuple[pl.Expr, str]]:
    """Quarantine reasons for event-log rows, in the order they are tested."""
    return [
        (raw("cookie_id").is_null(), "missing cookie_id"),
        (raw("ts").is_null(), "missing ts"),
        (pl.col("ts").is_null(), "unparsable ts"),
        (window.excludes(pl.col("ts")), "impossible timestamp"),
        (raw("event_type").is_null(), "missing event_type"),
        (raw("item_id").is_null(), "missing item_id"),
        (is_bad_optional(raw("price"), pl.col("price"), is_zero(raw("price"))), "unparsable price"),
        (is_bad_optional(raw("quantity"), pl.col("quantity"), is_zero(raw("quantity"))), "unparsable quantity"),
    ]


def _with_optional(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in OPTIONAL if n not in rows.columns)


def _read_csv(path: Path, window: TimeWindow) -> Iterator[ParsedChunk]:
    names: list[str] = []
    for chunk in iter_line_chunks(path):
        if chunk.first_line == 1:
            names = chunk.header()
            _check_columns(path, names)
        split = split_fields(chunk, names, quoted=True, header=chunk.first_line == 1)
        split = SplitLines(_with_optional(split.rows), split.rejects)
        yield validate_lines(chunk, split, event_values(), event_checks(window), source=SOURCE, labelled=True)


def _read_json_lines(path: Path, window: TimeWindow) -> Iterator[ParsedChunk]:
    fields = (*REQUIRED, *OPTIONAL)
    checks = [
        (raw("json").is_null(), "unparsable JSON"),
        (~raw("json").str.starts_with("{"), "JSON line is not an object"),
        *event_checks(window),
    ]
    for chunk in iter_line_chunks(path):
        codes = chunk.problems()
        keep = codes == OK
        lines = chunk.strings(keep)
        rows = pl.DataFrame({"line": chunk.line_numbers[keep]}).with_columns(
            lines.str.json_path_match("$").alias("json"),
            *(lines.str.json_path_match(f"$.{name}").alias(name) for name in fields),
        )
        split = SplitLines(rows, chunk.rejects(np.flatnonzero(~keep), codes))
        yield validate_lines(chunk, split, event_values(), checks, source=SOURCE, labelled=True)


def _read_parquet(path: Path, window: TimeWindow) -> Iterator[ParsedChunk]:
    try:
        source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == ".gz" else path
        table = pl.read_parquet(source)
    except (OSError, EOFError, pl.exceptions.PolarsError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(error).split())[:200]})") from None
    _check_columns(path, table.columns)
    nested = [name for name, dtype in table.schema.items() if dtype.is_nested()]
    if nested:
        raise InputError(f"{path}: columns {', '.join(nested)} are nested, expected plain values")
    text = [
        (pl.col(name).dt.epoch("ms") if dtype.is_temporal() and name == "ts" else pl.col(name)).cast(pl.String)
        for name, dtype in table.schema.items()
    ]
    table = _with_optional(table.select(text))
    table = table.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    for offset in range(0, table.height, PARQUET_ROWS):
        rows = table.slice(offset, PARQUET_ROWS)
        yield validate(rows, event_values(), event_checks(window), source=SOURCE, labelled=True, raw_text=_row_json)


def _row_json(bad: pl.DataFrame) -> pl.Series:
    fields = [name for name in bad.columns if name.startswith("raw_")]
    return bad.select(pl.struct(pl.col(fields).name.map(lambda n: n.removeprefix("raw_"))).struct.json_encode())[:, 0]


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (found: {', '.join(names)[:200]})")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: repeated column names in {', '.join(names)[:200]}")
