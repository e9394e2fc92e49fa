"""What analysts ask of the lake: scored sessions with filters and one session's events with
the model's running buying intent (SQL over the lake's tables is serve.sql)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import polars as pl

from clickstream.models.registry.loading import load_model
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import EVENT_TYPES, SCORES
from clickstream.pipeline.core.tracking import require_store
from clickstream.pipeline.serve.output import write_output

if TYPE_CHECKING:
    from clickstream.pipeline.serve.scoring import Scorer

__all__ = ["explain_session", "query_scores", "session_trace", "write_output"]


def query_scores(
    settings: Settings,
    start: dt.date | None,
    end: dt.date | None,
    *,
    top: int | None = None,
    min_score: float | None = None,
    cookie: str | None = None,
    session: str | None = None,
) -> pl.DataFrame:
    """Scored sessions of [start, end] (default: the latest date that holds scores, by the commit
    log's row counts, so a day without scored sessions is never "the latest") passing every given
    filter, sorted by score descending then session_id; `top` keeps the first N of that order.
    Columns: date, then the SCORES columns; none when no date of the window was scored (the CLI
    refuses such a window first, naming the scored days)."""
    lake = Lake(settings.lake, settings.buckets)
    scored = lake.require_dates("scores", None, None, "run `clickstream score` first")
    if start is None and end is None:
        start = end = scored[-1]
    scan = lake.scan("scores", start, end)
    if scan is None:
        return pl.DataFrame(schema={"date": pl.Date, **SCORES})
    if cookie is not None:
        scan = scan.filter(pl.col("cookie_id") == cookie)
    if session is not None:
        scan = scan.filter(pl.col("session_id") == session)
    if min_score is not None:
        scan = scan.filter(pl.col("score") >= min_score)
    ordered = scan.select("date", *SCORES.names()).sort(["score", "session_id"], descending=[True, False])
    return (ordered if top is None else ordered.head(top)).collect()


def explain_session(settings: Settings, session_id: str, model_uri: str | None = None) -> pl.DataFrame:
    """The session's input events in time order with the running buying intent after each,
    from `model_uri` (default the champion); see session_trace for the columns."""
    sequence = find_session(Lake(settings.lake, settings.buckets), session_id)
    require_store(settings.tracking_uri, model_uri or settings.champion_uri)
    return session_trace(sequence, load_model(settings, model_uri))


def find_session(lake: Lake, session_id: str) -> pl.DataFrame:
    """The one sequences/ row of `session_id` (the earliest start if several); NoDataError if absent."""
    scan = lake.scan("sequences")
    found = None if scan is None else scan.filter(pl.col("session_id") == session_id).collect()
    if found is None or found.height == 0:
        raise NoDataError(f"session {session_id!r} is not in sequences/ of lake {lake}")
    return found.sort("session_start").head(1)


def session_trace(sequence: pl.DataFrame, scorer: Scorer) -> pl.DataFrame:
    """One row per input event of a one-session `sequence`, in time order: position (from 1),
    seconds_since_start (from the stored log gaps, to about 0.1%), event, item_id, category,
    intent (running buy probability after the event) and change (from the previous event's
    intent; the first event's change is its intent)."""
    intent = scorer.running_scores(sequence)
    events = sequence.select("item_id", "category", "event_type", "log_gap_prev").explode(
        ["item_id", "category", "event_type", "log_gap_prev"]
    )
    trace = events.select(
        position=pl.int_range(1, pl.len() + 1, dtype=pl.Int32),
        seconds_since_start=(pl.col("log_gap_prev").cast(pl.Float64).exp() - 1).cum_sum().round(1),
        event=pl.col("event_type").replace_strict(
            list(range(len(EVENT_TYPES))), list(EVENT_TYPES), return_dtype=pl.String
        ),
        item_id=pl.col("item_id"),
        category=pl.col("category"),
        intent=pl.Series(intent, dtype=pl.Float32),
    )
    return trace.with_columns(change=pl.col("intent").diff().fill_null(pl.col("intent")))
