"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model(...).predict(frame)` and
`mlflow models serve` score with the same ModelBundle, the same features and the same
calibration as `clickstream score`.

`predict` takes a pandas DataFrame in one of two forms and returns one row per session,
`session_id` and `score` (the calibrated buy probability, float32):

- sessions, as rows of the lake's sequences/: the columns the model reads are `session_id`,
  `item_id`, `category`, `event_type` (lists of EVENT_TYPE_CODE), `log_gap_prev` (lists of
  floats), and `start_hour` (0-23 UTC), or else `session_start` to derive it from. Other
  columns are ignored. Rows come back in input order.
- raw events, one row per event: `session_id`, `ts`, `item_id`, `category` (may be null) and
  `event_type` (a name of EVENT_TYPES; any other becomes "other"). They become sessions with the
  pipeline's own functions (features.sequences.sessions_of): events in time order, those at or
  after a session's first purchase left out, the last `max_events` kept. Sessions come back in
  order of first appearance; one without any input event (a purchase first) scores NaN.

Timestamps (`session_start`, `ts`) may be timezone-aware (converted to UTC), naive (read as
UTC) or ISO-8601 strings, as JSON brings them to `mlflow models serve`. Input the model cannot
read raises an MlflowException naming the problem (HTTP 400 from the server).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from clickstream.features.sequences import sessions_of
from clickstream.models.bundle import ModelBundle
from clickstream.pipeline.core.config import SequenceConfig
from clickstream.pipeline.core.schemas import EVENT_TYPES, SEQUENCES, UTC_TS

SESSION_COLUMNS = ("session_id", "item_id", "category", "event_type", "log_gap_prev", "start_hour")
EVENT_COLUMNS = ("session_id", "ts", "item_id", "category", "event_type")
_LISTS = ("item_id", "category", "event_type", "log_gap_prev")


class BuyIntentModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of `clickstream-buy-intent`; its state is the ModelBundle in the model's artifacts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = ModelBundle.load(context.artifacts)

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """`session_id` and calibrated `score` per session of `model_input` (sessions or raw events)."""
        return score_input(self.bundle, model_input).to_pandas()


def score_input(bundle: ModelBundle, frame: pd.DataFrame) -> pl.DataFrame:
    """`session_id` and `score` (Float32) for sessions or raw events (the module's two input forms)."""
    if not isinstance(frame, pd.DataFrame):
        raise _invalid(f"expected a DataFrame of sessions or events, got {type(frame).__name__}")
    if "ts" in frame.columns and "log_gap_prev" not in frame.columns:
        events = events_frame(frame)
        sessions = sequences_of_events(events, bundle.sequences)
        scores = sessions.select("session_id", score=pl.Series(bundle.score(sessions), dtype=pl.Float32))
        order = events.select(pl.col("session_id").unique(maintain_order=True))
        return order.join(scores, on="session_id", how="left", maintain_order="left").with_columns(
            pl.col("score").fill_null(float("nan"))
        )
    sessions = sessions_frame(frame)
    return sessions.select("session_id", score=pl.Series(bundle.score(sessions), dtype=pl.Float32))


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
            *(pl.col(name).cast(types[name], strict=True) for name in ("session_id", "start_hour")),
            pl.col("item_id").cast(pl.List(pl.String)).cast(types["item_id"]),
            pl.col("category").cast(pl.List(pl.String)).cast(types["category"]),
            pl.col("event_type").cast(types["event_type"], strict=True),
            pl.col("log_gap_prev").cast(types["log_gap_prev"], strict=True),
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
    if codes.len() and not codes.is_between(0, len(EVENT_TYPES) - 1).all():
        raise _invalid(f"event_type codes must lie in 0..{len(EVENT_TYPES) - 1} ({', '.join(EVENT_TYPES)})")
    return sessions.with_columns(n_events=lengths.get_column("item_id").cast(pl.Int32))


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

