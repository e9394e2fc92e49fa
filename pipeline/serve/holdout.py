"""Which scored sessions may judge a model: only those that start after the last day of sessions
the model saw while it was trained and early-stopped (its `val_end` tag, `trained_through` in
history.model_versions). A session inside that window would flatter it; one scored by a model
whose window is not recorded cannot be told apart, so it is left out as well.

The rule needs only a session's date and model version, so it applies as well to aggregates keyed
by both (the report's score bins) as to single sessions: the report never holds the sessions.

A new champion has usually seen every day scored so far, so "live" figures (on days it never saw)
start empty; waiting_for_live says why and when they appear, instead of a blank section."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Holdout:
    """The rows fit to judge their model, and the one sentence that says what was left out."""

    kept: pl.DataFrame
    excluded: int  # labelled sessions left out
    sentence: str  # "" when nothing labelled was left out


def after_training(rows: pl.DataFrame, versions: pl.DataFrame) -> Holdout:
    """`rows` without those of a date on or before the `trained_through` day of the version that
    scored them (versions: history.VERSIONS). `rows` has columns date, model_version and `labelled`,
    the number of sessions with a known outcome the row stands for (1 or 0 for a single session,
    any count for an aggregate by date and model version)."""
    windows = versions.select(model_version="version", trained_through="trained_through")
    joined = rows.join(windows, on="model_version", how="left")
    inside = pl.col("trained_through").is_null() | (pl.col("date") <= pl.col("trained_through"))
    left_out = joined.filter(inside & (pl.col("labelled") > 0))
    kept = joined.filter(~inside).drop("trained_through")
    if left_out.height == 0:
        return Holdout(kept, 0, "")
    excluded = int(left_out["labelled"].sum())
    per_version = (
        left_out.group_by("model_version", "trained_through")
        .agg(pl.len())
        .sort("model_version")
        .select(
            pl.when(pl.col("trained_through").is_null())
            .then(pl.format("v{} (training window not recorded)", "model_version"))
            .otherwise(pl.format("v{} saw sessions through {}", "model_version", "trained_through"))
        )
        .to_series()
        .to_list()
    )
    first, last = left_out["date"].min(), left_out["date"].max()
    sentence = (
        f"Live figures (lift, AUC, calibration) leave out {excluded:,} labelled sessions of "
        f"{first}..{last} that fall within the training window of the model that scored them "
        f"({'; '.join(per_version)})."
    )
    return Holdout(kept, excluded, sentence)


def waiting_for_live(kept: pl.DataFrame, champion: str | None, trained_through: dt.date | None) -> str:
    """One sentence on why the champion has no live figures yet and when they will appear, or ""
    when it has labelled sessions after its training window. `kept`: Holdout.kept; `trained_through`:
    the champion's last training day (None when not recorded)."""
    if champion is None:
        return (
            "No champion is registered yet: live figures appear once a promoted model scores days after its "
            "training window."
        )
    if trained_through is None:
        return (
            f"Champion v{champion} has no recorded training window, so its scores cannot be told apart from the days "
            "it learned from: live figures appear once a newly trained champion scores days after its window."
        )
    mine = kept.filter(pl.col("model_version") == champion)
    if mine.height == 0:
        return (
            f"No scored day after {trained_through} yet: live figures appear once days after the training window "
            f"of champion v{champion} are scored."
        )
    if mine["labelled"].sum() == 0:
        return (
            f"The days after {trained_through} that champion v{champion} scored have no known outcomes yet: "
            "live figures appear once their sessions' outcomes are ingested."
        )
    return ""
