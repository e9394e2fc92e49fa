"""Frames out to analysts: an aligned text table, spreadsheet-safe CSV, JSON records or Parquet,
to stdout or to a file written atomically (temporary name, then moved into place); and a stage's
summary as JSON, and a list of days as short text, for the command line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import sys
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import polars as pl

from clickstream.pipeline.core.errors import ClickstreamError

FORMATS = ("table", "csv", "json", "parquet")
TABLE_DECIMALS = 4
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = r"^[=+\-@\t\r]"
DAY_RUNS_SHOWN = 3  # runs of consecutive days named at each end of format_days' text


def write_output(frame: pl.DataFrame, fmt: str, out: Path | None, *, lake: str | None = None) -> str:
    """Write `frame` as `fmt` to `out` (atomically; never a folder nor inside `lake`, see
    check_out) or to stdout; returns a one-line summary.

    table: aligned columns, numbers right-aligned, floats to 4 decimals, nulls blank.
    csv: header row; text cells starting with = + - @ tab or CR get a leading ' so a
    spreadsheet shows them as text. json: an array of records. parquet: needs `out`.
    Nested values (lists, structs) are JSON text in table and csv. When csv or json goes to
    stdout the summary goes to stderr (and "" is returned) so that pipes get only data.
    """
    if fmt not in FORMATS:
        raise ClickstreamError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
    shape = f"{frame.height:,} rows x {frame.width} columns"
    if fmt == "parquet":
        if out is None:
            raise ClickstreamError("--format parquet writes binary data: give --out FILE")
        replace_file(out, lambda tmp: frame.write_parquet(tmp, statistics=True), lake=lake)
        return f"{shape} written to {out} (parquet)"
    text = {"table": format_table, "csv": format_csv, "json": format_json}[fmt](frame)
    if out is not None:
        replace_file(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), lake=lake)
        return f"{shape} written to {out} ({fmt})"
    sys.stdout.write(text)
    sys.stdout.flush()
    if fmt == "table":
        return shape
    print(shape, file=sys.stderr)
    return ""


def format_table(frame: pl.DataFrame) -> str:
    """Aligned plain-text table: a header, a rule, one line per row, each line ending in a newline."""
    cells = format_cells(frame)
    titles, rules, padded = [], [], []
    for name, dtype in frame.schema.items():
        width = max(len(name), cells[name].str.len_chars().max() or 0)
        right = dtype.is_numeric()
        titles.append(name.rjust(width) if right else name.ljust(width))
        rules.append("-" * width)
        padded.append(pl.col(name).str.pad_start(width) if right else pl.col(name).str.pad_end(width))
    lines = cells.select(pl.concat_str(padded, separator="  ").str.strip_chars_end()).to_series()
    body = "".join(f"{line}\n" for line in lines.to_list())
    return f"{'  '.join(titles).rstrip()}\n{'  '.join(rules)}\n{body}"


def format_csv(frame: pl.DataFrame) -> str:
    """CSV with a header; text cells that a spreadsheet would run as a formula start with '."""
    cells = _nested_as_json(frame)
    text_columns = [name for name, dtype in cells.schema.items() if dtype == pl.String]
    safe = cells.with_columns(
        pl.when(pl.col(name).str.contains(FORMULA_START)).then("'" + pl.col(name)).otherwise(pl.col(name)).alias(name)
        for name in text_columns
    )
    return safe.write_csv()


def format_json(frame: pl.DataFrame) -> str:
    """A JSON array of row objects (timestamps as ISO-8601 text), newline-terminated."""
    return frame.write_json() + "\n"


def _nested_as_json(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with every nested column (list, struct, array) as its JSON text."""
    # '{"v":<value>}' -> '<value>': the value's own JSON text
    return frame.with_columns(
        pl.when(pl.col(name).is_not_null())
        .then(pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5).str.head(-1))
        .alias(name)
        for name, dtype in frame.schema.items()
        if dtype.is_nested()
    )


def format_cells(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as display text, same order: floats to TABLE_DECIMALS places, timestamps to the
    second, nested values as JSON, tab/CR/LF as \\t \\r \\n and other control characters as ?, nulls blank."""
    flat = _nested_as_json(frame)
    cells = []
    for name, dtype in flat.schema.items():
        expr = pl.col(name)
        if dtype.is_float():
            expr = pl.when(expr.abs() < 1e12).then(_fixed(expr, TABLE_DECIMALS)).otherwise(expr.cast(pl.String))
        elif dtype == pl.Datetime:
            expr = expr.dt.to_string("%Y-%m-%d %H:%M:%S")
        elif dtype == pl.String:  # control characters would break the lines and the alignment
            expr = expr.str.replace_many(["\t", "\r", "\n"], ["\\t", "\\r", "\\n"]).str.replace_all(
                r"[\x00-\x1f\x7f]", "?"
            )
        cells.append(expr.cast(pl.String).fill_null("").alias(name))
    return flat.select(cells)


def _fixed(value: pl.Expr, decimals: int) -> pl.Expr:
    """A float as text with exactly `decimals` digits after the point (polars has no format width)."""
    scaled = (value * 10**decimals).round().cast(pl.Int64)
    whole = (scaled.abs() // 10**decimals).cast(pl.String)
    fraction = (scaled.abs() % 10**decimals).cast(pl.String).str.pad_start(decimals, "0")
    sign = pl.when(scaled < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.concat_str([sign, whole, pl.lit("."), fraction])


def summary_json(summary: object) -> str:
    """A stage's summary dataclass as one JSON object: its fields (nested summaries as objects), its
    properties and its one-line text as `summary`, so a script reads the same facts as a person."""
    return json.dumps({**_record(summary), "summary": str(summary)}, allow_nan=False)


def _record(value: object) -> object:
    """`value` as JSON data: dataclasses as objects of their fields and properties, dates as ISO
    text, paths as text, enums as their values and a NaN or infinity (nothing compared) as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [field.name for field in dataclasses.fields(value)]
        names += [name for name, attr in vars(type(value)).items() if isinstance(attr, property)]
        return {name: _record(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {str(key): _record(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_record(item) for item in value]
    if isinstance(value, Enum):
        return _record(value.value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def format_days(days: list[dt.date]) -> str:
    """Days as runs of consecutive days with their count, e.g. "2014-04-01..2014-04-03, 2014-04-08
    (4 days)", so an error can say in one line what a table holds (the middle runs of a very gappy
    table as "...")."""
    if not days:
        return "no days"
    series = pl.Series("day", sorted(days), dtype=pl.Date)
    first, last = pl.col("first").cast(pl.String), pl.col("last").cast(pl.String)
    runs = (
        series.to_frame()
        .with_columns(run=(series.diff().dt.total_days() != 1).fill_null(True).cum_sum())
        .group_by("run", maintain_order=True)
        .agg(first=pl.col("day").first(), last=pl.col("day").last())
        .select(pl.when(first == last).then(first).otherwise(pl.concat_str(first, pl.lit(".."), last)))
        .to_series()
        .to_list()
    )
    if len(runs) > 2 * DAY_RUNS_SHOWN:
        runs = [*runs[:DAY_RUNS_SHOWN], "...", *runs[-DAY_RUNS_SHOWN:]]
    return f"{', '.join(runs)} ({series.len():,} day{'' if series.len() == 1 else 's'})"


def check_out(out: Path, lake: str | None) -> None:
    """ClickstreamError unless `out` can be an analyst file: not inside the local `lake` root
    (links followed; only the pipeline writes there), not a folder, in a folder that exists."""
    out = Path(out)
    if lake is not None and "://" not in lake.removeprefix("file://"):
        root = Path(lake.removeprefix("file://")).resolve()
        if out.resolve() == root or root in out.resolve().parents:
            raise ClickstreamError(f"cannot write {out}: it is inside the lake {root}; write outside the lake")
    if out.is_dir():
        raise ClickstreamError(f"cannot write {out}: it is a folder; give a file name")
    if not out.parent.is_dir():
        raise ClickstreamError(f"cannot write {out}: folder {out.parent} does not exist")


def replace_file(out: Path, write: Callable[[Path], object], *, lake: str | None = None) -> None:
    """Run write(tmp) on a temporary name beside `out`, then move it into place: readers see the
    old file or the new one, never a part; a failed write leaves no temporary file behind.
    `out` must pass check_out."""
    out = Path(out)
    check_out(out, lake)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as error:
        raise ClickstreamError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
