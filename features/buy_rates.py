"""Item and category buy rates from a training window, as per-event model inputs.

An item embedding needs many sessions of an item before it learns that the item sells; a
smoothed buy rate (target encoding, as the RecSys 2015 winners used) carries that from the
first sighting. For every id: the labelled training sessions containing it (each session once)
and how many of them bought, smoothed towards the window's buyer share with SMOOTHING
pseudo-sessions, fed to the model as log-odds.

On the training sessions themselves the counts leave out the session's own fold (FOLDS folds
by a stable hash of session_id), so a session's label never feeds its own features; every
other session (validation, scoring) uses all training counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

FOLDS = 5
SMOOTHING = 20.0  # pseudo-sessions at the window's buyer share added to every id's counts
RATE_KEYS = ("item_id", "category")


@dataclass(frozen=True, eq=False)
class BuyCounts:
    """Per id of one key: labelled training sessions containing it and how many bought."""

    counts: pl.DataFrame  # id (String), sessions (Int64), buyers (Int64), ascending id
    prior: float  # buyer share of the labelled training sessions


def count_buyers(sequences: pl.DataFrame, key: str) -> BuyCounts:
    """Session and buyer counts per id of list column `key` over the labelled sessions.

    Deterministic: the same sessions in any row order give the same table.
    """
    labelled = sequences.filter(pl.col("label").is_not_null())
    counts = (
        _session_ids(labelled, key)
        .group_by("id")
        .agg(pl.len().cast(pl.Int64).alias("sessions"), pl.col("label").cast(pl.Int64).sum().alias("buyers"))
        .sort("id")
    )
    prior = float(labelled.get_column("label").cast(pl.Float64).mean()) if labelled.height else 0.0
    return BuyCounts(counts=counts, prior=prior)


def event_counts(
    ids: pl.Series,
    session_of_event: np.ndarray,
    sequences: pl.DataFrame,
    rates: BuyCounts,
    *,
    out_of_fold: bool,
) -> pl.DataFrame:
    """Training sessions and buyers behind every event's id (Int64 columns `sessions`, `buyers`,
    order of `ids`; 0 for unseen ids). `ids` are the flat events of `sequences`, `session_of_event`
    each event's row. With `out_of_fold`, `sequences` must be the sessions `rates` was counted on:
    each session's own fold is left out, so its label never feeds its own counts."""
    events = pl.DataFrame({"id": ids}).join(rates.counts, on="id", how="left", maintain_order="left")
    if out_of_fold:
        fold = (sequences.get_column("session_id").hash(seed=0) % FOLDS).to_numpy()[session_of_event]
        label = sequences.get_column("label").cast(pl.Float64).fill_null(float("nan")).to_numpy()[session_of_event]
        own_fold = (
            pl.DataFrame({"row": session_of_event, "id": ids, "fold": fold, "label": label})
            .filter(pl.col("label").is_not_nan() & pl.col("id").is_not_null())
            .unique(["row", "id"])
            .group_by("fold", "id")
            .agg(
                pl.len().cast(pl.Int64).alias("own_sessions"),
                pl.col("label").sum().cast(pl.Int64).alias("own_buyers"),
            )
        )
        events = (
            events.with_columns(pl.Series("fold", fold))
            .join(own_fold, on=["fold", "id"], how="left", maintain_order="left")
            .with_columns(
                pl.col("sessions") - pl.col("own_sessions").fill_null(0),
                pl.col("buyers") - pl.col("own_buyers").fill_null(0),
            )
        )
    return events.select(pl.col("sessions").fill_null(0), pl.col("buyers").fill_null(0))


def buy_logits(
    ids: pl.Series, session_of_event: np.ndarray, sequences: pl.DataFrame, rates: BuyCounts, *, out_of_fold: bool
) -> np.ndarray:
    """Smoothed buy log-odds of every event's id relative to the prior's (float32, order of `ids`;
    0 for unseen ids), from `event_counts`."""
    counts = event_counts(ids, session_of_event, sequences, rates, out_of_fold=out_of_fold)
    logits = counts.select(_logit(rates.prior, pl.col("sessions"), pl.col("buyers")).cast(pl.Float32))
    return logits.to_series().to_numpy()


def _logit(prior: float, sessions: pl.Expr, buyers: pl.Expr) -> pl.Expr:
    """Buy log-odds smoothed with SMOOTHING pseudo-sessions at the (clipped) prior, relative to
    the prior's log-odds: 0 for an unseen id, so the input is centred whatever the base rate."""
    prior = min(max(prior, 1e-4), 1 - 1e-4)
    odds = (buyers + SMOOTHING * prior) / (sessions - buyers + SMOOTHING * (1 - prior))
    return (odds / (prior / (1 - prior))).log()


def _session_ids(sequences: pl.DataFrame, key: str) -> pl.DataFrame:
    """One row per (session, distinct id in it) with the session's label."""
    return (
        sequences.select(pl.int_range(pl.len()).alias("row"), pl.col(key).alias("id"), "label")
        .explode("id")
        .drop_nulls("id")
        .unique(["row", "id"])
    )
