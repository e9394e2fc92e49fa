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


def buy_logits(sequences: pl.DataFrame, key: str, rates: BuyCounts, *, out_of_fold: bool) -> np.ndarray:
    """Smoothed buy log-odds of every event's id (float32, flat event order of `sequences`).

    Unseen ids get the prior. With `out_of_fold`, `sequences` must be the sessions `rates` was
    counted on: each session's own fold is subtracted from the counts.
    """
    events = sequences.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(key).alias("id"), "label", _fold()
    ).explode("id", empty_as_null=False, keep_nulls=True)
    joined = events.join(rates.counts, on="id", how="left", maintain_order="left").with_columns(
        pl.col("sessions", "buyers").fill_null(0)
    )
    if out_of_fold:
        own_fold = (
            _session_ids(sequences.filter(pl.col("label").is_not_null()).with_columns(_fold()), key, by_fold=True)
            .group_by("fold", "id")
            .agg(
                pl.len().cast(pl.Int64).alias("fold_sessions"),
                pl.col("label").cast(pl.Int64).sum().alias("fold_buyers"),
            )
        )
        joined = joined.join(own_fold, on=["fold", "id"], how="left", maintain_order="left").with_columns(
            (pl.col("sessions") - pl.col("fold_sessions").fill_null(0)).alias("sessions"),
            (pl.col("buyers") - pl.col("fold_buyers").fill_null(0)).alias("buyers"),
        )
    prior = min(max(rates.prior, 1e-4), 1 - 1e-4)
    buyers = pl.col("buyers") + SMOOTHING * prior
    others = pl.col("sessions") - pl.col("buyers") + SMOOTHING * (1 - prior)
    return joined.select((buyers / others).log().cast(pl.Float32)).to_series().to_numpy()


def _fold() -> pl.Expr:
    return (pl.col("session_id").hash(seed=0) % FOLDS).alias("fold")


def _session_ids(sequences: pl.DataFrame, key: str, *, by_fold: bool = False) -> pl.DataFrame:
    """One row per (session, distinct id in it) with the session's label (and fold)."""
    extra = ["fold"] if by_fold else []
    return (
        sequences.select(pl.int_range(pl.len()).alias("row"), pl.col(key).alias("id"), "label", *extra)
        .explode("id")
        .drop_nulls("id")
        .unique(["row", "id"])
    )
