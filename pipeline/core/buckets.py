"""Session-hash buckets: the unit of work within a day.

A row's bucket is xxh3-64 (seed 0) of its session key modulo the lake's bucket count. The key is
the cookie where there is one (every session of a cookie, cut per cookie or named by the log,
lands in one bucket, and so does the cookie's rollup) and the source session id otherwise
(YOOCHOOSE). xxh3 is a published function: every process, machine, Python and library version
gives the same bucket, so a day's events and the sequences and scores built from them agree.
No stage needs another bucket's rows.
"""

from __future__ import annotations

import polars as pl
import polars_hash  # noqa: F401  (registers the `nchash` namespace of expressions)

BUCKET = pl.Int32  # the partition column's type

# the session key: the cookie, else the source session id (ingest quarantines rows with neither)
_KEY = pl.coalesce("cookie_id", "session_id")


def stable_hash(key: pl.Expr) -> pl.Expr:
    """XXH3-64 (seed 0) of each string of `key`: the same on every machine and library version."""
    return key.nchash.xxh3_64()


def bucket_of(buckets: int, key: pl.Expr = _KEY) -> pl.Expr:
    """The bucket (0 .. buckets - 1) of each row's session `key`; 0 for every row with one bucket."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, not {buckets}")
    if buckets == 1:
        return pl.lit(0, dtype=BUCKET).alias("bucket")
    return (stable_hash(key) % buckets).cast(BUCKET).alias("bucket")


def cookie_bucket(buckets: int) -> pl.Expr:
    """The bucket of each row's `cookie_id` (a cookie's rollup lives with its sessions)."""
    return bucket_of(buckets, pl.col("cookie_id"))
