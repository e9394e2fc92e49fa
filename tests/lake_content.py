"""What a lake holds, as content hashes: the yardstick of the concurrency, crash-safety and idempotency tests.

A date's hash covers its schema and the multiset of its rows (row hashes sorted), so it is blind
to row order, to how the rows are split into files and to the table's history, but sees any
changed, missing or duplicated row. It is read through the Delta log (`Lake.read`): only what the
latest commit of each table holds counts, never a data file the log does not name. Columns that
legitimately differ between runs (`scored_at`) are left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from clickstream.pipeline.core.lake import TABLES, Lake
from clickstream.pipeline.core.schemas import with_strings

VOLATILE_COLUMNS = ("scored_at",)  # a timestamp per run, by contract


def content_hash(frame: pl.DataFrame, ignore: tuple[str, ...] = VOLATILE_COLUMNS) -> str:
    """sha256 of the frame's schema and its sorted row hashes, `ignore` columns left out."""
    kept = with_strings(frame.drop(ignore, strict=False))
    rows = np.sort(kept.hash_rows(seed=0).to_numpy())
    return hashlib.sha256(repr(kept.schema).encode() + rows.tobytes()).hexdigest()


def lake_snapshot(root: str | Path) -> dict[str, str]:
    """Content hash of every date that holds rows in each table's latest version, keyed
    `<table>/date=<YYYY-MM-DD>` (the `date` column itself is the key, not part of the hash)."""
    lake = Lake(root)
    snapshot = {}
    for table in TABLES:
        frame = lake.read(table)
        for (day,), rows in frame.partition_by("date", as_dict=True, include_key=False).items():
            snapshot[f"{table}/date={day.isoformat()}"] = content_hash(rows)
    return dict(sorted(snapshot.items()))
