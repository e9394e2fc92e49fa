"""Cookie event logs: JSON Lines, CSV with a header, or Parquet (by extension, each optionally .gz).

Fields: `cookie_id`, `ts` (ISO-8601 with "Z" or an offset, or integer epoch milliseconds),
`event_type`, `item_id`, and optional `category`, `price`, `quantity`, `session_id`; other
fields are ignored. Event types other than the canonical ones become "other"; price and
quantity 0 mean unknown. A Parquet row's "line" is its 1-based row number and its raw text
the row as JSON.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.core.schemas import EVENT_TYPES
from clickstream.pipeline.ingest.raw_fields import (
    ParsedChunk,
    TimeWindow,
    event_timestamp,
    file_by_file,
    is_bad_optional,
    is_zero,
    price,
    quantity,
    raw,
    validate,
    validate_lines,
)
from clickstream.pipeline.ingest.raw_files import (
    OK,
    ReadLimits,
    SplitLines,
    check_file,
    iter_blocks,
    iter_line_chunks,
    split_fields,
)

SOURCE = "events"
REQUIRED = ("cookie_id", "ts", "event_type", "item_id")
# the form of a session id made from a cookie and the epoch ms of its first event (features.sessionize):
# a source id of that form could name another cookie's session
DERIVED_ID = r":-?[0-9]+$"
DERIVED_REASON = "session_id of the form <cookie_id>:<epoch ms>, kept for sessions cut per cookie"
OPTIONAL = ("category", "price", "quantity", "session_id")
IDS = ("cookie_id", "event_type", "item_id", "category", "session_id")
KINDS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS = 1_000_000


def read_batch(
    files: list[Path], buys: list[Path], window: TimeWindow, limits: ReadLimits
) -> Iterator[tuple[Path, ParsedChunk]]:
    """The event logs of a batch, file by file (a BatchReader of `formats.FORMATS`)."""
    return file_by_file(read_event_log, files, window, limits)


def read_event_log(path: Path, window: TimeWindow, limits: ReadLimits = ReadLimits()) -> Iterator[ParsedChunk]:
    """An event log as canonical events, chunk by chunk in file order."""
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    kind = KINDS.get(suffixes[0].lower()) if suffixes else None
    if kind is None:
        known = ", ".join(KINDS)
        raise InputError(f"{path}: cannot tell the event-log format from its name (expected {known}, optionally .gz)")
    reader = {"json": _read_json_lines, "csv": _read_csv, "parquet": _read_parquet}[kind]
    yield from reader(path, window, limits)


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
    """Quarantine reasons for event-log rows, in the order they are tested. An id (cookie,
    item, session, category, event type) must be a string or an integer, kept as written;
    `kind_<field>` columns (JSON, Parquet) say which a value is."""
    typed = [(raw(f"kind_{name}").is_in(("number", "other")), f"{name} is not a string or an integer") for name in IDS]
    return [
        *typed,
        (raw("cookie_id").is_null(), "missing cookie_id"),
        (raw("session_id").str.contains(DERIVED_ID), DERIVED_REASON),
        (raw("ts").is_null(), "missing ts"),
        (pl.col("ts").is_null(), "unparsable ts"),
        (window.excludes(pl.col("ts")), "impossible timestamp"),
        (raw("event_type").is_null(), "missing event_type"),
        (raw("item_id").is_null(), "missing item_id"),
        (is_bad_optional(raw("price"), pl.col("price"), is_zero(raw("price"))), "unparsable price"),
        (is_bad_optional(raw("quantity"), pl.col("quantity"), is_zero(raw("quantity"))), "unparsable quantity"),
    ]


def _with_optional(rows: pl.DataFrame) -> pl.DataFrame:
    """Absent optional fields, and the kinds of fields that have none (CSV: all text), as nulls."""
    names = [*OPTIONAL, *(f"kind_{name}" for name in (*REQUIRED, *OPTIONAL))]
    return rows.with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in names if n not in rows.columns)


def _read_csv(path: Path, window: TimeWindow, limits: ReadLimits) -> Iterator[ParsedChunk]:
    names: list[str] = []
    for chunk in iter_line_chunks(path, limits=limits):
        if chunk.first_line == 1:
            names = chunk.header()
            _check_columns(path, names)
        split = split_fields(chunk, names, quoted=True, header=chunk.first_line == 1)
        split = SplitLines(_with_optional(split.rows), split.rejects)
        yield validate_lines(chunk, split, event_values(), event_checks(window), source=SOURCE, labelled=True)


def _read_json_lines(path: Path, window: TimeWindow, limits: ReadLimits) -> Iterator[ParsedChunk]:
    checks = [
        (raw("json").is_null(), "unparsable JSON"),
        (raw("json") != "object", "JSON line is not an object"),
        *(
            (raw(f"kind_{name}") == LONE_SURROGATE, f"{name} holds a lone UTF-16 surrogate (not Unicode text)")
            for name in (*REQUIRED, *OPTIONAL)
        ),
        *event_checks(window),
    ]
    for chunk in iter_line_chunks(path, limits=limits):
        codes = chunk.problems()
        keep = codes == OK
        rows = _json_fields(pl.DataFrame({"line": chunk.line_numbers[keep], "text": chunk.texts(keep)}))
        split = SplitLines(rows, chunk.rejects(np.flatnonzero(~keep), codes))
        yield validate_lines(chunk, split, event_values(), checks, source=SOURCE, labelled=True)


# A JSON value's first token: a string, a number, a literal, or the start of an object or array.
TOKEN = r'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null|[\[{]'
INTEGER = r"^-?(?:0|[1-9][0-9]*)$"
# The kind of a JSON string holding an escaped UTF-16 surrogate without its pair ("\ud83d"): valid JSON,
# but no Unicode text, so no column can hold it; its row goes to the quarantine with a reason.
LONE_SURROGATE = "lone surrogate"


def _json_fields(lines: pl.DataFrame) -> pl.DataFrame:
    """`line`, `json` ("object", "other" or null when the line is no JSON) and, per field, its
    text and `kind_<field>` ("string", "integer", "number", "other"; null when absent).

    A string's text is the decoded string, an integer's its digits exactly as written (any
    length), other values polars' rendering. Vectorised: polars' JSON path gives the decoded
    value and a regex the value's source token, and the two must agree; lines where they may
    not (the key appears twice or nested, escapes in the value, numbers polars cannot parse)
    are decoded one by one with the json module instead.
    """
    text, fields = pl.col("text"), (*REQUIRED, *OPTIONAL)
    whole = text.str.json_path_match("$")
    columns: list[pl.Expr] = [pl.when(whole.str.starts_with("{")).then(pl.lit("object")).otherwise(
        pl.when(whole.is_not_null()).then(pl.lit("other"))).alias("json")]
    agree: list[pl.Expr] = [whole.is_not_null()]
    for name in fields:
        value = text.str.json_path_match(f"$.{name}")
        token = text.str.extract(rf'"{name}"\s*:\s*({TOKEN})', 1)
        keys = text.str.count_matches(rf'"{name}"\s*:')
        kind = (
            pl.when(token.str.starts_with('"')).then(pl.lit("string"))
            .when(token.str.contains(INTEGER)).then(pl.lit("integer"))
            .when(token.str.contains("^-?[0-9]")).then(pl.lit("number"))
            .when(token.is_not_null() & (token != "null")).then(pl.lit("other"))
        )
        as_float = value.cast(pl.Float64, strict=False) == token.cast(pl.Float64, strict=False)
        same = (
            pl.when(kind == "string").then(~token.str.contains("\\", literal=True)
                                           & (token.str.slice(1, token.str.len_chars() - 2) == value))
            .when(kind == "integer").then((value == token) | as_float)
            .when(kind == "number").then(as_float)
            .when(kind == "other").then((value == token) | (value.str.slice(0, 1) == token))
            .otherwise(value.is_null())
        )
        agree.append(((keys == 0) & value.is_null()) | ((keys == 1) & same.fill_null(False)))
        columns += [pl.when(kind == "integer").then(token).otherwise(value).alias(name), kind.alias(f"kind_{name}")]
    frame = lines.with_columns(pl.all_horizontal(agree).alias("fast"))
    fast = frame.filter("fast").select("line", *columns)
    slow = frame.filter(~pl.col("fast"))
    if slow.height:
        fast = pl.concat([fast, _decode_one_by_one(slow, fields).select(fast.columns)]).sort("line")
    return fast.with_columns(pl.col(fields).replace("", None))


class _Number(str):
    """A JSON number's source text."""


class _Integer(_Number):
    """A JSON integer's source text (any number of digits)."""


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _decode_one_by_one(rows: pl.DataFrame, fields: tuple[str, ...]) -> pl.DataFrame:
    """`_json_fields` for the lines the vectorised path cannot vouch for, with the json module."""
    out: dict[str, list] = {"json": [], **{n: [] for n in fields}, **{f"kind_{n}": [] for n in fields}}
    for line in rows.get_column("text").to_list():
        try:
            value = json.loads(line, parse_int=_Integer, parse_float=_Number, parse_constant=_not_json)
        except (ValueError, RecursionError):
            value, kind = {}, None
        else:
            kind = "object" if isinstance(value, dict) else "other"
        out["json"].append(kind)
        value = value if isinstance(value, dict) else {}
        for name in fields:
            text, kind = _text_and_kind(value.get(name))
            out[name].append(text)
            out[f"kind_{name}"].append(kind)
    schema = dict.fromkeys(out, pl.String)
    return pl.DataFrame(out, schema=schema).insert_column(0, rows.get_column("line"))


def _text_and_kind(value: object) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, _Number):
        return str(value), "integer" if isinstance(value, _Integer) else "number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: its escaped text (ASCII) stands in for it
            return json.dumps(value)[1:-1], LONE_SURROGATE
        return value, "string"
    return json.dumps(value, separators=(",", ":")), "other"


def _read_parquet(path: Path, window: TimeWindow, limits: ReadLimits) -> Iterator[ParsedChunk]:
    checks = [(raw("bad_utf8"), "non-UTF-8 bytes"), *event_checks(window)]
    with _parquet_file(path, limits) as parquet:
        names = parquet.schema_arrow.names
        _check_columns(path, names)
        wanted = [name for name in (*REQUIRED, *OPTIONAL) if name in names]  # other columns are never read
        line = 1
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_ROWS, columns=wanted):
                table = pl.from_arrow(batch)
                rows = _with_optional(_parquet_fields(table)).insert_column(
                    0, pl.Series("line", np.arange(line, line + table.height, dtype=np.int64))
                )
                line += table.height
                yield validate(rows, event_values(), checks, source=SOURCE, labelled=True, raw_text=_row_json)
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as error:
            raise InputError(f"{path}: unreadable Parquet data after row {line - 1:,} ({_short(error)})") from None


@contextlib.contextmanager
def _parquet_file(path: Path, limits: ReadLimits) -> Iterator[pq.ParquetFile]:
    """The file as a pyarrow ParquetFile (a `.gz` decompressed to a temporary file first, within the limits)."""
    with contextlib.ExitStack() as stack:
        source: Path | IO[bytes] = path
        if path.suffix == ".gz":
            source = stack.enter_context(tempfile.TemporaryFile())
            for chunk in iter_blocks(path, limits):
                source.write(chunk)
            source.seek(0)
        else:
            check_file(path)
        try:
            parquet = pq.ParquetFile(source)
        except (OSError, pa.ArrowException) as error:
            raise InputError(f"{path}: not a readable Parquet file ({_short(error)})") from None
        yield parquet


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def _parquet_fields(table: pl.DataFrame) -> pl.DataFrame:
    """Each column as text plus its kind (as for JSON: "string", "integer", "number", "other"),
    and `bad_utf8`: a binary value of the row is not UTF-8."""
    bad_utf8 = pl.Series("bad_utf8", [False] * table.height)
    for name, dtype in table.schema.items():
        if dtype == pl.Binary:
            text = _utf8(table.get_column(name))
            bad_utf8 |= table.get_column(name).is_not_null() & text.is_null()
            table = table.with_columns(text)
    columns = []
    for name, dtype in table.schema.items():
        column, kind = pl.col(name), "other"
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
            text, kind = column.cast(pl.String), "string"
        elif dtype.is_integer() or (isinstance(dtype, pl.Decimal) and dtype.scale == 0):
            text, kind = column.cast(pl.String), "integer"
        elif dtype.is_float():
            text, kind = column.cast(pl.String), "number"
        elif name == "ts" and isinstance(dtype, pl.Datetime | pl.Date):
            text, kind = column.dt.epoch("ms").cast(pl.String), "integer"
        else:  # booleans, nested values, durations...: kept as JSON for the quarantine
            text = pl.struct(column).struct.json_encode().str.json_path_match(f"$.{name}")
        columns += [text.alias(name), pl.when(column.is_not_null()).then(pl.lit(kind)).alias(f"kind_{name}")]
    return table.select(*columns).with_columns(bad_utf8)


def _utf8(column: pl.Series) -> pl.Series:
    """A binary column as text, null where a value is not UTF-8 (then decoded value by value)."""
    try:
        return column.cast(pl.String)
    except pl.exceptions.ComputeError:
        return pl.Series(column.name, [_decoded(value) for value in column.to_list()], dtype=pl.String)


def _decoded(value: bytes | None) -> str | None:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _row_json(bad: pl.DataFrame) -> pl.Series:
    fields = [f"raw_{name}" for name in (*REQUIRED, *OPTIONAL)]
    return bad.select(pl.struct(pl.col(fields).name.map(lambda n: n.removeprefix("raw_"))).struct.json_encode())[:, 0]


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise InputError(f"{path}: no column {', '.join(missing)} (found: {', '.join(names)[:200]})")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: repeated column names in {', '.join(names)[:200]}")
