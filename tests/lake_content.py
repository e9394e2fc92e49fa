"""What a lake holds, as content hashes: the yardstick of the crash-safety and idempotency tests.

A partition's hash covers its schema and the multiset of its rows (row hashes sorted), so it
is blind to row order and file bytes but sees any changed, missing or duplicated row. Columns
that legitimately differ between runs (`scored_at`) are left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from clickstream.pipeline.core.schemas import with_strings

VOLATILE_COLUMNS = ("scored_at",)  # a timestamp per run, by contract


def content_hash(frame: pl.DataFrame, ignore: tuple[str, ...] = VOLATILE_COLUMNS) -> str:
    """sha256 of the frame's schema and its sorted row hashes, `ignore` columns left out."""
    kept = with_strings(frame.drop(ignore, strict=False))
    rows = np.sort(kept.hash_rows(seed=0).to_numpy())
    return hashlib.sha256(repr(kept.schema).encode() + rows.tobytes()).hexdigest()


def lake_snapshot(root: str | Path) -> dict[str, str]:
    """Content hash of every committed Parquet file under `root`, keyed by its path relative to it."""
    base = Path(root)
    files = sorted(base.rglob("*.parquet"))
    return {str(path.relative_to(base)): content_hash(pl.read_parquet(path)) for path in files}


def temporary_files(root: str | Path) -> list[str]:
    """Temporary files of interrupted writes (`*.tmp-<uuid>`) under `root`, relative, sorted."""
    base = Path(root)
    return sorted(str(path.relative_to(base)) for path in base.rglob("*.tmp-*"))
