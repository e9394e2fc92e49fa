"""Column schemas of the lake tables: the contract between stages.

A stage writes exactly these columns in this order (`conform` checks it), so a
reader can rely on names and types without looking at the writer.
"""

from __future__ import annotations

import polars as pl

UTC_TS = pl.Datetime("us", "UTC")

# Canonical event types; anything else in an event log becomes "other".
EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "other")
EVENT_TYPE_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}

# events/date=YYYY-MM-DD/part-<batch>.parquet (date = UTC date of `ts`)
EVENTS = pl.Schema(
    {
        "session_id": pl.String,  # source session id; null for cookie logs without one
        "cookie_id": pl.String,  # null for YOOCHOOSE
        "ts": UTC_TS,
        "event_type": pl.String,  # one of EVENT_TYPES
        "item_id": pl.String,
        "category": pl.String,  # raw category ("0", "1".."12", "S", brand id) or null
        "price": pl.Float64,  # null when unknown (0 in YOOCHOOSE)
        "quantity": pl.Int32,  # null when unknown
        "source": pl.String,  # "yoochoose" | "events" | "retailrocket"
        "labelled": pl.Boolean,  # False when the outcome is not in this input (clicks without buys)
    }
)

# quarantine/date=YYYY-MM-DD/part-<batch>.parquet (date = ingestion date)
QUARANTINE = pl.Schema(
    {
        "file": pl.String,
        "line": pl.Int64,  # 1-based physical line number in the (decompressed) file
        "raw": pl.String,  # the line as read (invalid UTF-8 replaced by U+FFFD)
        "reason": pl.String,
        "format": pl.String,
    }
)

# sequences/date=YYYY-MM-DD/data.parquet (date = UTC date of session_start)
# Raw item and category ids are kept: a model's own vocabulary turns them into
# indices when it loads them, so one partition serves every model version. They are
# Categorical (Parquet dictionary-encoded strings): readers get integer codes without
# decoding a string per event (features.event_ids).
SEQUENCES = pl.Schema(
    {
        "session_id": pl.String,
        "cookie_id": pl.String,
        "session_start": UTC_TS,
        "session_end": UTC_TS,
        "n_events": pl.Int32,  # length of every list column below
        "n_events_total": pl.Int32,  # events before leakage removal and truncation
        "truncated": pl.Boolean,
        "label": pl.Boolean,  # null when unknown
        "source": pl.String,
        "start_hour": pl.Int8,
        "start_weekday": pl.Int8,  # 1 = Monday .. 7 = Sunday
        "item_id": pl.List(pl.Categorical()),
        "category": pl.List(pl.Categorical()),  # null where the event had none
        "event_type": pl.List(pl.Int8),  # EVENT_TYPE_CODE
        "log_gap_prev": pl.List(pl.Float32),  # log1p(seconds since previous event); 0 for the first
        "log_dwell": pl.List(pl.Float32),  # log1p(seconds to next event); 0 for the last
        "dwell_known": pl.List(pl.Boolean),  # False for the last event, whose dwell is unknown
    }
)

# scores/date=YYYY-MM-DD/data.parquet (date = UTC date of session_start)
SCORES = pl.Schema(
    {
        "session_id": pl.String,
        "cookie_id": pl.String,
        "session_start": UTC_TS,
        "n_events": pl.Int32,
        "score": pl.Float32,
        "model_name": pl.String,
        "model_version": pl.String,
        "scored_at": UTC_TS,
    }
)

# cookie_intent/data.parquet: one row per known cookie over all scored days
COOKIE_INTENT = pl.Schema(
    {
        "cookie_id": pl.String,
        "sessions": pl.Int32,
        "last_seen": UTC_TS,
        "latest_score": pl.Float32,
        "max_score": pl.Float32,
    }
)


def with_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its Categorical columns, also inside lists, as String: what to hash or
    compare across processes, since polars numbers categories in the order a process meets them."""
    return frame.with_columns(
        pl.col(pl.List(pl.Categorical)).cast(pl.List(pl.String)), pl.col(pl.Categorical).cast(pl.String)
    )


def with_string_types(schema: pl.Schema) -> pl.Schema:
    """`schema` with Categorical types, also inside lists, as String: how the lake stores them."""
    string_of = {pl.Categorical(): pl.String, pl.List(pl.Categorical()): pl.List(pl.String)}
    return pl.Schema({name: string_of.get(dtype, dtype) for name, dtype in schema.items()})


def conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """The frame with exactly the schema's columns, order and types.

    Raises ValueError naming the missing columns: a writer bug, not user input.
    """
    missing = [name for name in schema.names() if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
