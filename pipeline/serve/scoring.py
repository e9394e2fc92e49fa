"""Batch scoring: sequences -> scores with one registered model, then the per-cookie rollup
cookie_intent rebuilt from every scored day.

A scoring run reads one version of `sequences` and replaces the scores of its dates in one
commit (recording that version and the model), then rewrites cookie_intent from the scores
version it just made, in a second commit. The same model on the same sequences gives the same
`score` values (prediction is a deterministic no-grad forward); only `scored_at`, one
timestamp per run, differs between runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import polars as pl

from clickstream.features.sequences import read_sequences
from clickstream.models.scorer import load_scorer
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LakeConflictError
from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.core.schemas import COOKIE_INTENT, SCORES, conform

if TYPE_CHECKING:
    import numpy as np

class Scorer(Protocol):
    """What scoring needs from a loaded model (models.scorer.load_scorer returns one)."""

    model_name: str
    model_version: str

    def score(self, sequences: pl.DataFrame) -> np.ndarray: ...

    def running_scores(self, sequences: pl.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring run wrote."""

    dates: tuple[dt.date, ...]
    sessions: int
    model_name: str
    model_version: str
    cookies: int
    seconds: float

    def __str__(self) -> str:
        n = len(self.dates)
        span = f"{self.dates[0]}..{self.dates[-1]} ({n} dates)" if n > 1 else f"{self.dates[0]}"
        rate = self.sessions / self.seconds if self.seconds > 0 else 0.0
        return (
            f"scored {self.sessions:,} sessions on {span} with "
            f"{self.model_name} v{self.model_version} at {rate:,.0f} sessions/s; "
            f"cookie_intent: {self.cookies:,} cookies"
        )


def score_dates(
    settings: Settings, start: dt.date | None, end: dt.date | None, model_uri: str | None = None
) -> ScoreSummary:
    """Score the sessions of sequences/ dates in [start, end] (default: the latest date) with
    `model_uri` (default the champion) into scores/, then rebuild cookie_intent/.

    Idempotent: the same model and sequences give the same rows; only scored_at differs.
    """
    days = scoring_dates(Lake(settings.lake), start, end)
    return score_with(settings, load_scorer(settings, model_uri), days)


def scoring_dates(lake: Lake, start: dt.date | None, end: dt.date | None) -> list[dt.date]:
    """The sequences/ dates in [start, end], ascending; the latest one when both are None."""
    days = lake.require_dates("sequences", start, end, "run `clickstream sequences` first")
    return days[-1:] if start is None and end is None else days


def score_with(settings: Settings, scorer: Scorer, days: list[dt.date]) -> ScoreSummary:
    """Score each day's sequences with `scorer` and replace the scores of [days[0], days[-1]] in
    one commit (rows sorted by session_id within a day, one scored_at for the whole run), then
    rebuild cookie_intent."""
    began = time.perf_counter()
    lake = Lake(settings.lake)
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sequences_version = lake.version("sequences")
    sessions = 0

    def frames() -> Iterator[pl.DataFrame]:
        nonlocal sessions
        for day in days:
            frame = score_frame(read_sequences(lake, day, day, version=sequences_version), scorer, scored_at)
            sessions += frame.height
            yield frame.with_columns(date=pl.lit(day))

    meta = {
        "sequences_version": sequences_version,
        "model_name": scorer.model_name,
        "model_version": scorer.model_version,
        "first_date": days[0],
        "last_date": days[-1],
    }
    version = lake.commit("scores", frames(), replace=dates_predicate(days[0], days[-1]), stage="score", metadata=meta)
    cookies = refresh_cookie_intent(lake, version)
    return ScoreSummary(
        dates=tuple(days),
        sessions=sessions,
        model_name=scorer.model_name,
        model_version=str(scorer.model_version),
        cookies=cookies,
        seconds=time.perf_counter() - began,
    )


def score_frame(sequences: pl.DataFrame, scorer: Scorer, scored_at: dt.datetime) -> pl.DataFrame:
    """One SCORES row per session of `sequences`, sorted by session_id."""
    scores = scorer.score(sequences) if sequences.height else []
    frame = sequences.select("session_id", "cookie_id", "session_start", "n_events").with_columns(
        score=pl.Series(scores, dtype=pl.Float32),
        model_name=pl.lit(scorer.model_name),
        model_version=pl.lit(str(scorer.model_version)),
        scored_at=pl.lit(scored_at),
    )
    return conform(frame, SCORES).sort("session_id")


# rollups another scoring run can force this one to redo before it gives up (each follows a commit of theirs)
ROLLUP_ATTEMPTS = 10


def refresh_cookie_intent(lake: Lake, scores_version: int) -> int:
    """Rebuild cookie_intent from `scores_version`, then again from the newest scores for as long as
    another run committed scores meanwhile: a rollup of an older version committed after that run's
    own would hide its sessions. The last run to finish leaves the rollup of the newest scores."""
    for _ in range(ROLLUP_ATTEMPTS):
        try:
            cookies = rebuild_cookie_intent(lake, scores_version)
        except LakeConflictError:  # another run's rollup landed first: built from scores as new, or newer
            cookies = None
        latest = lake.version("scores")
        if cookies is not None and latest == scores_version:
            return cookies
        scores_version = latest if latest is not None else scores_version
    raise LakeConflictError(f"cookie_intent of lake {lake}: other scoring runs kept changing scores; run it again")


def rebuild_cookie_intent(lake: Lake, scores_version: int) -> int:
    """Rewrite cookie_intent from every scored day at `scores_version`, in one commit; returns the
    number of cookies.

    One row per known cookie, sorted by cookie_id within the date of its last_seen: its scored
    sessions, the start of its latest session (last_seen), that session's score (latest_score;
    ties on start go to the greatest session_id) and its highest score.
    """
    scores = lake.scan("scores", version=scores_version)
    if scores is None:
        return 0
    rollup = (
        scores.filter(pl.col("cookie_id").is_not_null())
        .group_by("cookie_id")
        .agg(
            sessions=pl.len(),
            last_seen=pl.col("session_start").max(),
            latest_score=pl.col("score").sort_by(["session_start", "session_id"]).last(),
            max_score=pl.col("score").max(),
        )
        .collect()
    )
    frame = conform(rollup, COOKIE_INTENT).with_columns(date=pl.col("last_seen").dt.date()).sort("date", "cookie_id")
    meta = {"scores_version": scores_version, "rows": frame.height}
    lake.commit("cookie_intent", frame, replace=None, stage="score", metadata=meta)
    return frame.height
