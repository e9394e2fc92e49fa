"""YOOCHOOSE (RecSys Challenge 2015) clicks and buys files, CSV without a header.

    clicks: session_id,timestamp,item_id,category      -> `view` events
    buys:   session_id,timestamp,item_id,price,quantity -> `purchase` events

Ids are non-negative integers of at most 18 digits, kept as their source text; timestamps
are `2014-04-07T10:51:09.277Z`; a category is `0`, `1`..`12`, `S` or a brand id of 8-10
digits; price and quantity 0 mean unknown and become null.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from clickstream.pipeline.ingest.raw_fields import (
    ParsedChunk,
    TimeWindow,
    file_by_file,
    is_bad_optional,
    is_numeric_id,
    is_yoochoose_category,
    is_zero,
    price,
    quantity,
    raw,
    validate_lines,
    zulu_timestamp,
)
from clickstream.pipeline.ingest.raw_files import ReadLimits, iter_line_chunks, split_fields

SOURCE = "yoochoose"
CLICK_FIELDS = ["session_id", "timestamp", "item_id", "category"]
BUY_FIELDS = ["session_id", "timestamp", "item_id", "price", "quantity"]
HEADER_LIKE = r"^[A-Za-z_ ]+$"
HEADER = "header line in a headerless file"
NAMING_ONLY = frozenset({HEADER})  # a header line has no numeric session_id either: see validate()


def read_batch(
    files: list[Path], buys: list[Path], window: TimeWindow, limits: ReadLimits
) -> Iterator[tuple[Path, ParsedChunk]]:
    """Clicks files, then buys files (a BatchReader of `formats.FORMATS`); clicks are labelled
    when buys are given."""
    yield from file_by_file(functools.partial(read_clicks, labelled=bool(buys)), files, window, limits)
    yield from file_by_file(read_buys, buys, window, limits)


def read_clicks(
    path: Path, window: TimeWindow, limits: ReadLimits = ReadLimits(), *, labelled: bool
) -> Iterator[ParsedChunk]:
    """A clicks file as `view` events, chunk by chunk in file order."""
    for chunk in iter_line_chunks(path, limits=limits):
        split = split_fields(chunk, CLICK_FIELDS)
        values = {**_common_values(), "event_type": pl.lit("view"), "category": raw("category")}
        checks = [
            *_common_checks(CLICK_FIELDS, window),
            (raw("category").is_null(), "missing category"),
            (~is_yoochoose_category(raw("category")), "unparsable category"),
        ]
        yield validate_lines(chunk, split, values, checks, source=SOURCE, labelled=labelled, naming_only=NAMING_ONLY)


def read_buys(path: Path, window: TimeWindow, limits: ReadLimits = ReadLimits()) -> Iterator[ParsedChunk]:
    """A buys file as `purchase` events with price and quantity, chunk by chunk in file order."""
    for chunk in iter_line_chunks(path, limits=limits):
        split = split_fields(chunk, BUY_FIELDS)
        values = {
            **_common_values(),
            "event_type": pl.lit("purchase"),
            "price": price(raw("price")),
            "quantity": quantity(raw("quantity")),
        }
        checks = [
            *_common_checks(BUY_FIELDS, window),
            (is_bad_optional(raw("price"), pl.col("price"), is_zero(raw("price"))), "unparsable price"),
            (is_bad_optional(raw("quantity"), pl.col("quantity"), is_zero(raw("quantity"))), "unparsable quantity"),
        ]
        yield validate_lines(chunk, split, values, checks, source=SOURCE, labelled=True, naming_only=NAMING_ONLY)


def _common_values() -> dict[str, pl.Expr]:
    return {"session_id": raw("session_id"), "ts": zulu_timestamp(raw("timestamp")), "item_id": raw("item_id")}


def _common_checks(fields: list[str], window: TimeWindow) -> list[tuple[pl.Expr, str]]:
    header = pl.all_horizontal(raw(name).str.contains(HEADER_LIKE) for name in fields)
    return [
        (header, HEADER),
        (raw("session_id").is_null(), "missing session_id"),
        (~is_numeric_id(raw("session_id")), "unparsable session_id"),
        (raw("timestamp").is_null(), "missing timestamp"),
        (pl.col("ts").is_null(), "unparsable timestamp"),
        (window.excludes(pl.col("ts")), "impossible timestamp"),
        (raw("item_id").is_null(), "missing item_id"),
        (~is_numeric_id(raw("item_id")), "unparsable item_id"),
    ]
