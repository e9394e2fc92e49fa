"""The LightGBM baseline the LSTM must beat: gradient-boosted trees on per-session
aggregates in the style of the RecSys Challenge 2015 winners (Romov & Sokolov):
counts, distinct items and categories, duration, dwell and gap statistics, item and
category buy rates (and that of the sessions ending on each item), last-item features, start
hour and weekday.

Only the input events describe a session: `session_end` and `n_events_total` also count
a YOOCHOOSE session's purchases, so they would leak the label and are never used.

It learns from a stable sample of at most BASELINE_SESSIONS training sessions, and early-stops on at
most as many validation sessions (`baseline_sample`: by a hash of the session id, so the same
window samples the same sessions), so its memory does not grow with the window; the LSTM's
validation pass scores all validation sessions with it.

Buy rates come from the TRAINING sessions only, through the same counts the LSTM's
inputs use (features.buy_rates): on the training sessions themselves out of fold, so
a session's own label never feeds its features; validation and test sessions use all
training sessions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import polars as pl

from clickstream.features.buy_rates import RATE_KEYS, RATE_TABLES, SMOOTHING, BuyCounts, count_buyers, event_counts
from clickstream.models.training.shards import read_units
from clickstream.pipeline.core.buckets import stable_hash
from clickstream.pipeline.core.schemas import EVENT_TYPE_CODE, SEQUENCES

if TYPE_CHECKING:
    from clickstream.models.training.window import Part, TrainingWindow
    from clickstream.pipeline.core.lake import Lake

LIST_COLUMNS = ("item_id", "category", "event_type", "log_gap_prev", "log_dwell", "dwell_known")
PARAMS = {
    "objective": "binary",
    "metric": "auc",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": max(1, (os.cpu_count() or 2) // 2),  # OpenMP on every core thrashes a shared box
    "verbose": -1,
}
MAX_ROUNDS = 1000
# Sessions the GBM learns from at most (and validates on): on windows up to this size it sees them all
BASELINE_SESSIONS = 250_000
EARLY_STOPPING_ROUNDS = 50
FEATURE_CHUNK = 65_536  # sessions whose features are made at once


@dataclass(frozen=True)
class BuyRates:
    """Per key of features.buy_rates.RATE_KEYS: the training window's counts."""

    by_key: dict[str, BuyCounts]

    @property
    def prior(self) -> float:
        """Buyer share of the labelled training sessions."""
        return next(iter(self.by_key.values())).prior


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline: the booster and the training-window buy rates it was fitted with."""

    booster: lgb.Booster
    rates: BuyRates
    feature_names: tuple[str, ...]
    sessions: int  # training sessions it learned from

    def predict(self, sequences: pl.DataFrame) -> np.ndarray:
        """Buy probabilities (float32) for the sessions of a SEQUENCES frame, in its row order."""
        features = session_features(sequences, self.rates, out_of_fold=False)
        return self.booster.predict(_matrix(features)).astype(np.float32)


def fit_baseline(train: pl.DataFrame, val: pl.DataFrame, *, seed: int = 7) -> Baseline:
    """LightGBM fitted on labelled `train` sessions, early-stopped on validation AUC. Deterministic per
    seed and sessions, whatever their row order: bagging and binning draw rows by position, so the
    sessions go in (session_start, session_id) order, and a lake of 1 or 16 buckets fits one model."""
    train, val = (part.sort("session_start", "session_id") for part in (train, val))
    rates = buy_rates(train)
    names = session_features(val.head(0), rates, out_of_fold=False).columns
    train_set = lgb.Dataset(_chunked_matrix(train, rates, True), label=train["label"].to_numpy(), feature_name=names)
    val_set = lgb.Dataset(_chunked_matrix(val, rates, False), label=val["label"].to_numpy(), reference=train_set)
    booster = lgb.train(
        {**PARAMS, "seed": seed},
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[val_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    return Baseline(booster=booster, rates=rates, feature_names=tuple(names), sessions=train.height)


def baseline_sample(window: TrainingWindow) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training, validation) sessions of `window` for the baseline: each part whole when it holds at
    most BASELINE_SESSIONS, else a sample of about that many by the XXH3 of the session id, read a
    unit at a time."""
    return tuple(_sample(window.open(), part, BASELINE_SESSIONS) for part in (window.train, window.val))


def _sample(lake: Lake, part: Part, limit: int) -> pl.DataFrame:
    share = min(1.0, limit / max(part.sessions, 1))
    kept = stable_hash(pl.col("session_id").cast(pl.String)) % 2**32 < int(share * 2**32)
    frames = [frame if share == 1.0 else frame.filter(kept) for frame in read_units(lake, part.units)]
    return pl.concat(frames) if frames else pl.DataFrame(schema=SEQUENCES)


def buy_rates(train: pl.DataFrame) -> BuyRates:
    """Session and buyer counts for every item and category of the labelled training sessions."""
    return BuyRates({key: count_buyers(train, key) for key in RATE_KEYS})


def session_features(sequences: pl.DataFrame, rates: BuyRates, *, out_of_fold: bool) -> pl.DataFrame:
    """One row of float features per session, in the frame's row order.

    With `out_of_fold`, each session's buy rates leave out its own fold (use for the
    training sessions the rates were counted on); otherwise all training counts apply.
    """
    events = _events(sequences)
    for key in RATE_KEYS:
        events = _with_rate(events, sequences, rates.by_key[key], key, out_of_fold)
    last = pl.col("position") == pl.col("position").max()
    last_item = pl.col("item_id").filter(last).first()
    known_dwell = pl.col("log_dwell").filter(pl.col("dwell_known"))
    per_session = events.group_by("row").agg(
        pl.col("item_id").n_unique().alias("distinct_items"),
        pl.col("category").n_unique().alias("distinct_categories"),
        (pl.col("category") == "S").mean().alias("special_offer_share"),
        *[
            (pl.col("event_type") == code).sum().alias(f"n_{name}")
            for name, code in EVENT_TYPE_CODE.items()
            if name != "purchase"
        ],
        known_dwell.mean().alias("dwell_mean"),
        known_dwell.max().alias("dwell_max"),
        known_dwell.sum().alias("dwell_sum"),
        (pl.col("log_gap_prev").exp() - 1).sum().alias("duration_s"),
        pl.col("log_gap_prev").max().alias("gap_max"),
        pl.col("log_gap_prev").filter(last).first().alias("gap_last"),
        (pl.col("item_id") == last_item).sum().alias("last_item_views"),
        *[
            expr
            for key in RATE_KEYS
            for expr in (
                pl.col(f"{key}_rate").mean().alias(f"{key}_rate_mean"),
                pl.col(f"{key}_rate").max().alias(f"{key}_rate_max"),
                pl.col(f"{key}_rate").min().alias(f"{key}_rate_min"),
                pl.col(f"{key}_rate").filter(last).first().alias(f"{key}_rate_last"),
                pl.col(f"{key}_rate").filter(pl.col("position") == 0).first().alias(f"{key}_rate_first"),
                pl.col(f"{key}_popularity").mean().alias(f"{key}_popularity_mean"),
                pl.col(f"{key}_popularity").filter(last).first().alias(f"{key}_popularity_last"),
            )
        ],
    )
    sessions = sequences.with_row_index("row").select("row", "n_events", "start_hour", "start_weekday")
    return (
        sessions.join(per_session, on="row", how="left")
        .sort("row")
        .drop("row")
        .with_columns((pl.col("n_events") - pl.col("distinct_items")).alias("repeated_items"))
        .cast(pl.Float32)
    )


def _events(sequences: pl.DataFrame) -> pl.DataFrame:
    """One row per event: session row, position within the session and the per-event columns."""
    return (
        sequences.with_row_index("row")
        .select(
            "row",
            pl.int_ranges(0, pl.col("n_events").cast(pl.Int64)).alias("position"),
            *LIST_COLUMNS,
        )
        .explode(["position", *LIST_COLUMNS])
        .drop_nulls("position")
    )


def _with_rate(
    events: pl.DataFrame, sequences: pl.DataFrame, rates: BuyCounts, key: str, out_of_fold: bool
) -> pl.DataFrame:
    """`events` with `<key>_rate` (smoothed buyer share) and `<key>_popularity` (log1p sessions)."""
    column, _ = RATE_TABLES[key]
    counts = event_counts(events[column], events["row"].to_numpy(), sequences, rates, out_of_fold=out_of_fold)
    sessions, buyers = counts["sessions"], counts["buyers"]
    return events.with_columns(
        ((buyers + rates.prior * SMOOTHING) / (sessions + SMOOTHING)).alias(f"{key}_rate"),
        sessions.cast(pl.Float64).log1p().alias(f"{key}_popularity"),
    )


def _chunked_matrix(
    sequences: pl.DataFrame, rates: BuyRates, out_of_fold: bool, chunk: int = FEATURE_CHUNK
) -> np.ndarray:
    """The float32 feature matrix of `sequences`, made `chunk` sessions at a time: the per-event frame
    the features come from is several times the sessions' size, and is never whole."""
    parts = [sequences.slice(start, chunk) for start in range(0, max(sequences.height, 1), chunk)]
    return np.concatenate([_matrix(session_features(part, rates, out_of_fold=out_of_fold)) for part in parts])


def _matrix(features: pl.DataFrame) -> np.ndarray:
    return features.fill_null(float("nan")).to_numpy().astype(np.float32)
