"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model(...).predict(frame)` and
`mlflow models serve` score with the same ModelBundle, the same features and the same
calibration as `clickstream score`.

`predict` takes a pandas DataFrame in one of two forms and returns one row per session,
`session_id` and `score` (the calibrated buy probability, float32):

- sessions, as rows of the lake's sequences/: the columns the model reads are `session_id`,
  `item_id`, `category`, `event_type` (lists of EVENT_TYPE_CODE), `log_gap_prev` (lists of
  floats: log1p of the seconds since the previous event, 0 for the first), and `start_hour`
  (0-23 UTC), or else `session_start` to derive it from. Other columns are ignored. Rows come
  back in input order. Every session holds at least one event.
- raw events, one row per event: `session_id`, `ts`, `item_id`, `category` (may be null) and
  `event_type` (a name of EVENT_TYPES; any other becomes "other"). They become sessions with the
  pipeline's own functions (features.sequences.sessions_of): events in time order, those at or
  after a session's first purchase left out, the last `max_events` kept. Sessions come back in
  order of first appearance; every one must have an event before its first purchase.

Timestamps (`session_start`, `ts`) may be timezone-aware (converted to UTC), naive (read as
UTC) or ISO-8601 strings, as JSON brings them to `mlflow models serve`. Input the model cannot
read raises an MlflowException (INVALID_PARAMETER_VALUE: HTTP 400 from the server) naming the
column and the first sessions at fault: missing columns, wrong types, nulls, `start_hour`
outside 0..23, an `event_type` code outside EVENT_TYPE_CODE, a session without events, a
`log_gap_prev` value that is null, NaN, infinite, negative or above MAX_LOG_GAP. A score is
never NaN: should the model still give a non-finite score, the request fails the same way.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, INVALID_STATE

from clickstream.features.sequences import sessions_of
from clickstream.models.bundle import ModelBundle, WeightsChecksumError
from clickstream.pipeline.core.config import SequenceConfig
from clickstream.pipeline.core.schemas import EVENT_TYPES, SEQUENCES, UTC_TS

SESSION_COLUMNS = ("session_id", "item_id", "category", "event_type", "log_gap_prev", "start_hour")
EVENT_COLUMNS = ("session_id", "ts", "item_id", "category", "event_type")
_LISTS = ("item_id", "category", "event_type", "log_gap_prev")
MAX_LOG_GAP = math.log1p(100 * 365.25 * 86_400)  # log1p(seconds) of a century: no gap between clicks is longer
_SHOWN = 3  # offending sessions named in a message


class BuyIntentModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of `clickstream-buy-intent`; its state is the ModelBundle in the model's artifacts.
    A version gets it by running models/pyfunc_code.py (models from code); versions logged before
    that hold a pickled reference to this class, so its module and name stay as they are."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """The bundle, its weights checked against the SHA-256 its network.json records (models.bundle)."""
        try:
            self.bundle = ModelBundle.load(context.artifacts)
        except WeightsChecksumError as error:
            raise MlflowException(f"clickstream model not loaded: {error}", error_code=INVALID_STATE) from None

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """`session_id` and calibrated `score` per session of `model_input` (sessions or raw events)."""
        return score_input(self.bundle, model_input).to_pandas()


def score_input(bundle: ModelBundle, frame: pd.DataFrame) -> pl.DataFrame:
    """`session_id` and `score` (Float32, finite) for sessions or raw events (the module's two input forms)."""
    if not isinstance(frame, pd.DataFrame):
        raise _invalid(f"expected a DataFrame of sessions or events, got {type(frame).__name__}")
    if "ts" in frame.columns and "log_gap_prev" not in frame.columns:
        events = events_frame(frame)
        sessions = sequences_of_events(events, bundle.sequences)
        scores = sessions.select("session_id", score=pl.Series(bundle.score(sessions), dtype=pl.Float32))
        order = events.select(pl.col("session_id").unique(maintain_order=True))
        scored = order.join(scores, on="session_id", how="left", maintain_order="left")
        unscored = scored.filter(pl.col("score").is_null()).get_column("session_id")
        if unscored.len():
            raise _invalid(
                f"event_type: session(s) {_named(unscored)} have no event before their first purchase, "
                "so nothing to score; send the events before it"
            )
        return _finite(scored)
    sessions = sessions_frame(frame)
    return _finite(sessions.select("session_id", score=pl.Series(bundle.score(sessions), dtype=pl.Float32)))


def sessions_frame(frame: pd.DataFrame) -> pl.DataFrame:
    """The SEQUENCES columns the model reads from a frame of sessions (list columns as lists or arrays)."""
    start = [] if "start_hour" in frame.columns else ["session_start"]
    needed = [c for c in SESSION_COLUMNS if not (start and c == "start_hour")] + start
    _require(frame, needed, "sessions")
    raw = pl.from_pandas(frame[needed].reset_index(drop=True))
    types = {name: SEQUENCES[name] for name in SESSION_COLUMNS}
    try:
        if start:
            when = _utc(raw.get_column("session_start"))
            raw = raw.with_columns(start_hour=when.dt.hour())
        sessions = raw.select(
            pl.col("session_id").cast(types["session_id"], strict=True),
            pl.col("start_hour").cast(pl.Int64, strict=True),  # SEQUENCES' Int8 once its range is checked
            pl.col("item_id").cast(pl.List(pl.String)).cast(types["item_id"]),
            pl.col("category").cast(pl.List(pl.String)).cast(types["category"]),
            pl.col("event_type").cast(types["event_type"], strict=True),
            pl.col("log_gap_prev").cast(pl.List(pl.Float64), strict=True),  # Float32 once checked: 1e308 is no inf
            label=pl.lit(None, dtype=pl.Boolean),
        )
    except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
        raise _invalid(f"sessions input has columns of the wrong type: {_first_line(error)}") from None
    lengths = sessions.select(pl.col(c).list.len() for c in _LISTS)
    if _has_nulls(sessions, "session_id", "start_hour", "item_id", "event_type", "log_gap_prev"):
        raise _invalid("sessions input has nulls in session_id, start_hour or a whole list column")
    if not all((lengths.get_column(c).fill_null(-1) == lengths.get_column("item_id")).all() for c in _LISTS):
        raise _invalid("each session's item_id, category, event_type and log_gap_prev lists must be equally long")
    codes = sessions.get_column("event_type").explode(empty_as_null=False, keep_nulls=False)
    if codes.len() and not codes.is_between(0, len(EVENT_TYPES) - 1).fill_null(False).all():
        raise _invalid(f"event_type codes must lie in 0..{len(EVENT_TYPES) - 1} ({', '.join(EVENT_TYPES)})")
    _check_values(sessions, lengths.get_column("item_id"))
    return sessions.with_columns(
        pl.col("start_hour").cast(types["start_hour"]),
        pl.col("log_gap_prev").cast(types["log_gap_prev"]),
        n_events=lengths.get_column("item_id").cast(pl.Int32),
    )


def _check_values(sessions: pl.DataFrame, n_events: pl.Series) -> None:
    """A one-line MlflowException naming the column and the first sessions whose values the model cannot
    read: a start_hour outside 0..23, no event, a null item id, a null, non-finite, negative or
    implausibly large (above MAX_LOG_GAP) log_gap_prev."""
    ids = sessions.get_column("session_id")
    hour = sessions.get_column("start_hour")
    outside = ~hour.is_between(0, 23)
    if outside.any():
        raise _invalid(
            f"start_hour must be the session start's UTC hour, 0..23: session(s) {_named(ids.filter(outside))} "
            f"hold {_shown(hour.filter(outside))}"
        )
    if (n_events == 0).any():
        raise _invalid(f"item_id: session(s) {_named(ids.filter(n_events == 0))} hold no events; send at least one")
    flat = sessions.select("session_id", "item_id", "log_gap_prev").explode("item_id", "log_gap_prev")
    no_item = flat.filter(pl.col("item_id").is_null()).get_column("session_id")
    if no_item.len():
        raise _invalid(f"item_id holds null item ids in session(s) {_named(no_item)}")
    gaps = pl.col("log_gap_prev")
    problems = {
        "null, NaN or infinite values": gaps.is_null() | ~gaps.is_finite(),
        "negative time gaps (it is log1p of the seconds since the previous event, >= 0)": gaps < 0,
        f"gaps above {MAX_LOG_GAP:.2f} (log1p of the seconds of a century)": gaps > MAX_LOG_GAP,
    }
    for problem, where in problems.items():
        bad = flat.filter(where.fill_null(True))
        if bad.height:
            raise _invalid(
                f"log_gap_prev holds {problem}: session(s) {_named(bad.get_column('session_id'))} "
                f"hold {_shown(bad.get_column('log_gap_prev'))}"
            )


def _finite(scored: pl.DataFrame) -> pl.DataFrame:
    """`scored` when every score is finite; else a one-line MlflowException naming the sessions (never NaN out)."""
    score = scored.get_column("score")
    bad = (score.is_null() | ~score.is_finite()).fill_null(True)
    if bad.any():
        ids = _named(scored.get_column("session_id").filter(bad))
        raise _invalid(f"score: the model gives no finite score for session(s) {ids}; check their log_gap_prev")
    return scored


def _named(ids: pl.Series) -> str:
    """The first _SHOWN distinct session ids of `ids`, quoted, and how many more there are."""
    distinct = ids.unique(maintain_order=True)
    shown = ", ".join(repr(str(v)[:64]) for v in distinct.head(_SHOWN).to_list())
    more = distinct.len() - _SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _shown(values: pl.Series) -> str:
    """The first _SHOWN offending values, as Python writes them."""
    listed = ", ".join(repr(v) for v in values.head(_SHOWN).to_list())
    return f"{listed}, ..." if values.len() > _SHOWN else listed


def events_frame(frame: pd.DataFrame) -> pl.DataFrame:
    """An EVENTS-like frame (the columns sessions_of reads) from raw event rows."""
    _require(frame, EVENT_COLUMNS, "events")
    raw = pl.from_pandas(frame[list(EVENT_COLUMNS)].reset_index(drop=True))
    try:
        events = raw.select(
            pl.col("session_id").cast(pl.String),
            cookie_id=pl.lit(None, dtype=pl.String),
            ts=_utc(raw.get_column("ts")),
            event_type=pl.col("event_type").cast(pl.String),
            item_id=pl.col("item_id").cast(pl.String),
            category=pl.col("category").cast(pl.String),
            source=pl.lit("events"),
            labelled=pl.lit(False),
        )
    except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
        raise _invalid(f"events input has columns of the wrong type: {_first_line(error)}") from None
    if _has_nulls(events, "session_id", "ts", "event_type", "item_id"):
        raise _invalid("events input has null session_id, ts, event_type or item_id values")
    return events


def sequences_of_events(events: pl.DataFrame, config: SequenceConfig) -> pl.DataFrame:
    """The SEQUENCES rows of the sessions of `events` (events_frame), built as sequences/ builds them."""
    if events.is_empty():
        return pl.DataFrame(schema=SEQUENCES)
    days = events.get_column("ts").dt.date()
    sessions, _ = sessions_of(events, days.min(), days.max(), config)
    return sessions


def _utc(values: pl.Series) -> pl.Series:
    """Timestamps as UTC microseconds: aware ones converted, naive ones and ISO strings read as UTC."""
    if values.dtype == pl.String:
        values = values.str.to_datetime(time_unit="us", time_zone="UTC")
    if not isinstance(values.dtype, pl.Datetime):
        raise TypeError(f"{values.name} holds {values.dtype}, not timestamps")
    if values.dtype.time_zone is None:
        values = values.dt.replace_time_zone("UTC")
    return values.cast(UTC_TS)


def _has_nulls(frame: pl.DataFrame, *columns: str) -> bool:
    return bool(frame.select(pl.any_horizontal(pl.col(columns).is_null()).any()).item())


def _require(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], form: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _invalid(f"{form} input lacks columns {missing} (see the model's signature and input example)")


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def input_example(sessions: pl.DataFrame) -> pd.DataFrame:
    """A few sessions in the sessions form, with only the columns the model reads."""
    strings = pl.col("item_id", "category").cast(pl.List(pl.String))
    return sessions.select(SESSION_COLUMNS).with_columns(strings).to_pandas()
