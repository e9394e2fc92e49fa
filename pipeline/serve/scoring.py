"""Batch scoring: sequences -> scores with one registered model, then the per-cookie rollup
cookie_intent updated for the cookies whose scores changed.

A scoring run reads one version of `sequences` and replaces the scores of its dates (of one
bucket, or of every bucket one after another) in one commit (recording that version and the
model). Then, bucket by bucket, cookie_intent is updated for the cookies the run touched: their
rows are recomputed from their scores of every day and replace their old ones, in one commit per
bucket; other cookies' rows stay. Memory: one bucket-day of sequences, and the touched cookies'
rollup. The same model on the same sequences gives the same `score` values (prediction is a
deterministic no-grad forward); only `scored_at`, one timestamp per run, differs between runs.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import polars as pl

from clickstream.features.sequences import read_sequences
from clickstream.models.registry.loading import load_model
from clickstream.pipeline.core.buckets import BUCKET
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LakeConflictError
from clickstream.pipeline.core.lake import Lake, dates_predicate, partitions_predicate
from clickstream.pipeline.core.progress import LiveStatus
from clickstream.pipeline.core.schemas import COOKIE_INTENT, SCORES, conform

if TYPE_CHECKING:
    import numpy as np


class Scorer(Protocol):
    """What scoring needs from a loaded model: a models.bundle.ModelBundle (models.registry.loading.load_model
    returns one), or a stand-in."""

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
    settings: Settings,
    start: dt.date | None,
    end: dt.date | None,
    model_uri: str | None = None,
    bucket: int | None = None,
) -> ScoreSummary:
    """Score the sessions of sequences/ dates in [start, end] (default: the latest date) of `bucket`
    (default: every bucket) with `model_uri` (default the champion) into scores/, then update
    cookie_intent/.

    Idempotent: the same model and sequences give the same rows; only scored_at differs.
    """
    lake = Lake(settings.lake, settings.buckets)
    days = scoring_dates(lake, start, end)
    if bucket is not None:
        lake.check_bucket(bucket)
    return score_with(settings, load_model(settings, model_uri), days, bucket)


def scoring_dates(lake: Lake, start: dt.date | None, end: dt.date | None) -> list[dt.date]:
    """The sequences/ dates in [start, end], ascending; the latest one when both are None."""
    days = lake.require_dates("sequences", start, end, "run `clickstream sequences` first")
    return days[-1:] if start is None and end is None else days


def score_with(settings: Settings, scorer: Scorer, days: list[dt.date], bucket: int | None = None) -> ScoreSummary:
    """Score each day's sequences of `bucket` (default: every bucket, one after another) with
    `scorer` and replace the scores of [days[0], days[-1]] (of that bucket) in one commit (rows
    sorted by session_id within a day and bucket, one scored_at for the whole run), then update
    cookie_intent."""
    began = time.perf_counter()
    lake = Lake(settings.lake, settings.buckets)
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sequences_version = lake.version("sequences")
    buckets = range(lake.buckets) if bucket is None else [bucket]
    sessions = 0

    def frames() -> Iterator[pl.DataFrame]:
        nonlocal sessions
        todo = lake.rows_per_date("sequences", sequences_version, bucket)
        with LiveStatus("score", total=sum(todo.get(day, 0) for day in days), unit="sessions") as status:
            for part in buckets:
                for day in days:
                    sequences = read_sequences(lake, day, day, version=sequences_version, bucket=part)
                    frame = score_frame(sequences, scorer, scored_at)
                    sessions += frame.height
                    yield frame.with_columns(date=pl.lit(day), bucket=pl.lit(part))
                    status.update(completed=sessions)
                    del sequences, frame
                    release_freed_memory()

    meta = {
        "sequences_version": sequences_version,
        "model_name": scorer.model_name,
        "model_version": scorer.model_version,
        "first_date": days[0],
        "last_date": days[-1],
        "bucket": bucket,
    }
    replace = dates_predicate(days[0], days[-1], bucket)
    version = lake.commit("scores", frames(), replace=replace, stage="score", metadata=meta)
    cookies = sum(refresh_cookie_intent(lake, version, days, part) for part in buckets)
    return ScoreSummary(
        dates=tuple(days),
        sessions=sessions,
        model_name=scorer.model_name,
        model_version=str(scorer.model_version),
        cookies=cookies,
        seconds=time.perf_counter() - began,
    )


def release_freed_memory() -> None:
    """Hand the memory glibc keeps after a bucket-day back to the system: the model's forward frees
    as much as it allocates, and without this each bucket scored raised the peak a little more
    (benchmarks/RESULTS.md, "scale"). A no-op where the C library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


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


# cookie_intent rows with their partition columns
INTENT_ROWS = pl.Schema({**COOKIE_INTENT, "bucket": BUCKET, "date": pl.Date})
# rollups another scoring run can force this one to redo before it gives up (each follows a commit of theirs)
ROLLUP_ATTEMPTS = 10


def refresh_cookie_intent(lake: Lake, scores_version: int, days: list[dt.date], bucket: int) -> int:
    """Update cookie_intent of `bucket` for the cookies whose scores on `days` the commit that made
    `scores_version` changed; then again from the newest scores for as long as another run changed
    the bucket's scores meanwhile (a rollup of an older version committed after that run's own would
    hide its sessions). Returns the cookies updated."""
    changed_by = scores_version
    for _ in range(ROLLUP_ATTEMPTS):
        try:
            cookies = update_cookie_intent(lake, scores_version, changed_by, days, bucket)
        except LakeConflictError:  # another run's rollup of the bucket landed first
            cookies = None
        latest = lake.version("scores")
        if cookies is not None and _bucket_files(lake, latest, bucket) == _bucket_files(lake, scores_version, bucket):
            return cookies
        scores_version = latest if latest is not None else scores_version
    raise LakeConflictError(f"cookie_intent of lake {lake}: other scoring runs kept changing scores; run it again")


def _bucket_files(lake: Lake, version: int | None, bucket: int) -> set[str]:
    return set() if version is None else set(lake.files("scores", version=version, bucket=bucket))


def update_cookie_intent(lake: Lake, scores_version: int, changed_by: int, days: list[dt.date], bucket: int) -> int:
    """Replace the cookie_intent rows of `bucket` of every cookie with scores on `days` before or
    after the commit `changed_by` (a re-scored day may have dropped a cookie's session) by their
    rollup over every scored day at `scores_version`, in one commit; returns those cookies' number.

    One row per known cookie, sorted by cookie_id within the date of its last_seen: its scored
    sessions, the start of its latest session (last_seen), that session's score (latest_score;
    ties on start go to the greatest session_id) and its highest score. A cookie left without
    scores loses its row. Only the partitions (dates of last_seen) that held or now hold a touched
    cookie are rewritten.
    """
    first, last = days[0], days[-1]
    touched_scans = [
        scan.select("cookie_id")
        for version in {changed_by - 1, changed_by}
        if version >= 0 and (scan := lake.scan("scores", first, last, version, bucket)) is not None
    ]
    if not touched_scans:
        return 0
    touched = pl.concat(touched_scans).filter(pl.col("cookie_id").is_not_null()).unique().collect()
    if touched.is_empty():
        return 0
    scores = lake.scan("scores", version=scores_version, bucket=bucket)
    fresh = (
        pl.DataFrame(schema=INTENT_ROWS)
        if scores is None
        else _rollup(scores.join(touched.lazy(), on="cookie_id", how="semi"), bucket)
    )
    intent_version = lake.version("cookie_intent")
    current = lake.scan("cookie_intent", version=intent_version, bucket=bucket)
    held = set() if current is None else set(_dates_of(current.join(touched.lazy(), on="cookie_id", how="semi")))
    dates = sorted(held | set(fresh.get_column("date")))
    if not dates:
        return 0

    def frames() -> Iterator[pl.DataFrame]:
        for day in dates:
            rows = fresh.filter(pl.col("date") == day)
            if day in held:  # the other cookies' rows of the partition stay
                kept = lake.scan("cookie_intent", day, day, intent_version, bucket)
                assert kept is not None
                others = kept.join(touched.lazy(), on="cookie_id", how="anti").select(INTENT_ROWS.names()).collect()
                rows = pl.concat([conform(others, INTENT_ROWS), rows])
            yield rows.sort("cookie_id")

    meta = {"scores_version": scores_version, "cookies": touched.height, "bucket": bucket}
    lake.commit("cookie_intent", frames(), replace=partitions_predicate(dates, bucket), stage="score", metadata=meta)
    return touched.height


def _rollup(scores: pl.LazyFrame, bucket: int) -> pl.DataFrame:
    """INTENT_ROWS of the cookies of `scores` (see `update_cookie_intent`)."""
    rollup = (
        scores.filter(pl.col("cookie_id").is_not_null())
        .group_by("cookie_id")
        .agg(
            sessions=pl.len(),
            last_seen=pl.col("session_start").max(),
            latest_score=pl.col("score").sort_by(["session_start", "session_id"]).last(),
            max_score=pl.col("score").max(),
        )
        .with_columns(bucket=pl.lit(bucket), date=pl.col("last_seen").dt.date())
        .collect()
    )
    return conform(rollup, INTENT_ROWS)


def _dates_of(scan: pl.LazyFrame) -> list[dt.date]:
    return scan.select("date").unique().collect().get_column("date").to_list()
