"""Retailrocket `events.csv`: header `timestamp,visitorid,event,itemid,transactionid`, read as a
cookie event log (`visitorid` is the cookie, `timestamp` epoch milliseconds).

Events `view`, `addtocart` -> add_to_cart and `transaction` -> purchase; anything else is
"other". Visitor and item ids are non-negative integers; `transactionid` is not kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.ingest.raw_fields import (
    ParsedChunk,
    TimeWindow,
    epoch_ms_timestamp,
    file_by_file,
    is_numeric_id,
    raw,
    validate_lines,
)
from clickstream.pipeline.ingest.raw_files import ReadLimits, iter_line_chunks, split_fields

SOURCE = "retailrocket"
HEADER = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
EVENT_NAMES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}


def read_batch(
    files: list[Path], buys: list[Path], window: TimeWindow, limits: ReadLimits
) -> Iterator[tuple[Path, ParsedChunk]]:
    """Retailrocket events files, file by file (a BatchReader of `formats.FORMATS`)."""
    return file_by_file(read_retailrocket, files, window, limits)


def read_retailrocket(path: Path, window: TimeWindow, limits: ReadLimits = ReadLimits()) -> Iterator[ParsedChunk]:
    """A Retailrocket events file as canonical events, chunk by chunk in file order."""
    values = {
        "cookie_id": raw("visitorid"),
        "ts": epoch_ms_timestamp(raw("timestamp")),
        "event_type": raw("event").replace_strict(EVENT_NAMES, default="other"),
        "item_id": raw("itemid"),
    }
    checks = [
        (raw("timestamp").is_null(), "missing timestamp"),
        (pl.col("ts").is_null(), "unparsable timestamp"),
        (window.excludes(pl.col("ts")), "impossible timestamp"),
        (raw("visitorid").is_null(), "missing visitorid"),
        (~is_numeric_id(raw("visitorid")), "unparsable visitorid"),
        (raw("event").is_null(), "missing event"),
        (raw("itemid").is_null(), "missing itemid"),
        (~is_numeric_id(raw("itemid")), "unparsable itemid"),
    ]
    for chunk in iter_line_chunks(path, limits=limits):
        if chunk.first_line == 1 and (names := chunk.header()) != HEADER:
            raise InputError(f"{path}: header is {','.join(names)[:200]!r}, expected {','.join(HEADER)!r}")
        split = split_fields(chunk, HEADER, header=chunk.first_line == 1)
        yield validate_lines(chunk, split, values, checks, source=SOURCE, labelled=True)
