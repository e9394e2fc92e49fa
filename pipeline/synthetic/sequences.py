"""Small labelled SEQUENCES frames for tests, benchmarks and the demo, without running ingestion.

`synthetic_sequences` builds a SEQUENCES frame directly (vectorised numpy) with a
planted, order-dependent buying signal: buyers tend to end on a good item they
already looked at earlier in the session. `write_sequences` puts it into a lake
partitioned by the UTC date of each session's start, as the sequences stage does.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.core.schemas import SEQUENCES, conform


def _lists(flat: np.ndarray, offsets: np.ndarray) -> pl.Series:
    return pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat)))


def synthetic_sequences(
    sessions: int = 2000,
    days: int = 4,
    start_date: dt.date = dt.date(2014, 4, 1),
    seed: int = 0,
    n_items: int = 300,
    base_logit: float = -1.5,
) -> pl.DataFrame:
    """`sessions` labelled sessions spread over `days` days, SEQUENCES schema, sorted by start."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.3, sessions), 40).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_events = int(offsets[-1])
    session_of_event = np.repeat(np.arange(sessions), lengths)
    position = np.arange(n_events) - offsets[:-1][session_of_event]

    quality = np.random.default_rng(12345).normal(0.0, 1.0, n_items)  # fixed per catalogue
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item = rng.choice(n_items, n_events, p=popularity / popularity.sum())
    # half the time the last event revisits the session's first item: the planted order signal
    last = offsets[1:] - 1
    revisit = (rng.random(sessions) < 0.5) & (lengths > 1)
    item[last[revisit]] = item[offsets[:-1][revisit]]
    gaps = rng.exponential(60.0, n_events) * (position > 0)

    logit = base_logit + 1.2 * quality[item[last]] + 1.5 * revisit + 0.2 * np.log(lengths)
    label = rng.random(sessions) < 1.0 / (1.0 + np.exp(-logit))

    day = rng.integers(0, days, sessions)
    start = (
        np.datetime64(start_date.isoformat(), "us")
        + day.astype("timedelta64[D]")
        + rng.integers(0, 86_400 * 10**6 - 10**10, sessions).astype("timedelta64[us]")
    )
    seconds_from_start = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets[:-1]], lengths)
    event_ts = start[session_of_event] + (seconds_from_start * 1e6).astype("timedelta64[us]")
    dwell = np.append(gaps[1:], 0.0) * (position < lengths[session_of_event] - 1)

    frame = pl.DataFrame(
        {
            "session_id": np.char.add("s", np.arange(sessions).astype(str)),
            "cookie_id": pl.Series([None] * sessions, dtype=pl.String),
            "session_start": pl.Series(start).dt.replace_time_zone("UTC"),
            "session_end": pl.Series(event_ts[last]).dt.replace_time_zone("UTC"),
            "n_events": lengths.astype(np.int32),
            "n_events_total": lengths.astype(np.int32),
            "truncated": np.zeros(sessions, dtype=bool),
            "label": label,
            "source": pl.Series(["yoochoose"] * sessions),
            "item_id": _lists(item.astype(str), offsets),
            "category": _lists((item % 13).astype(str), offsets),
            "event_type": _lists(np.zeros(n_events, dtype=np.int8), offsets),
            "log_gap_prev": _lists(np.log1p(gaps).astype(np.float32), offsets),
            "log_dwell": _lists(np.log1p(dwell).astype(np.float32), offsets),
            "dwell_known": _lists(position < lengths[session_of_event] - 1, offsets),
        }
    ).with_columns(
        pl.col("session_start").dt.hour().cast(pl.Int8).alias("start_hour"),
        pl.col("session_start").dt.weekday().cast(pl.Int8).alias("start_weekday"),
    )
    return conform(frame, SEQUENCES).sort("session_start", "session_id")


def write_sequences(lake: Lake, frame: pl.DataFrame) -> list[dt.date]:
    """Replace the sequences of `frame`'s dates (the UTC dates of session_start) with its rows, in one
    commit; returns the dates written."""
    dated = frame.with_columns(date=pl.col("session_start").dt.date()).sort("date", "session_start", "session_id")
    days = dated["date"].unique().sort().to_list()
    lake.commit("sequences", dated, replace=dates_predicate(days[0], days[-1]), stage="synthetic")
    return days
