"""The registry as tables (`clickstream models`, the report, the `models` table of `clickstream sql`):
every model version with its aliases, the days it trained and validated on and its validation AUCs,
and every champion decision in the order it was taken.

Listing the versions costs the same few registry reads whatever their number: one search for the
versions, one read of the registered model for all its aliases, one search for the metrics of the
runs that trained them (registry.store)."""

from __future__ import annotations

import json
import sys

import polars as pl

from clickstream.models.registry.champion import decision_history
from clickstream.models.registry.decision import Decision, recorded_champion
from clickstream.models.registry.store import (
    EVENTS_VERSION_TAG,
    FEATURE_SCHEMA_TAG,
    SEQUENCES_VERSION_TAG,
    VAL_END_TAG,
    VAL_START_TAG,
    WINDOW_TAG,
    registered_versions,
    run_metrics,
    version_aliases,
)
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.serve.output import format_table

VERSIONS = {
    "version": pl.String,
    "registered": pl.Datetime("us", "UTC"),
    "aliases": pl.List(pl.String),  # the registry's aliases pointing at it, sorted (empty: none)
    "train_start": pl.Date,  # the training window asked for, first and last day (it holds the validation days)
    "train_end": pl.Date,
    "validation_start": pl.Date,  # its validation days: early stopping, val_auc and gbm_val_auc
    "validation_end": pl.Date,
    "trained_through": pl.Date,  # the last day of sessions the model saw: scores after it are live (serve.holdout)
    "val_auc": pl.Float64,  # on its own validation days, held out of the training sessions
    "gbm_val_auc": pl.Float64,  # the LightGBM baseline on the same sessions
    "feature_schema": pl.String,
    "sequences_version": pl.Int64,  # the `sequences` Delta version it learned from (`train --as-of`)
    "events_version": pl.Int64,  # the `events` version those sequences were built from
}
METRICS = ("val_auc", "gbm_val_auc")  # the training run's metrics a version shows
_AUC_LABELS = {"val_auc": "LSTM", "gbm_val_auc": "GBM"}
# what the JSON listing says of the champion on its own
CHAMPION_FIELDS = ("version", "val_auc", "gbm_val_auc", "validation_start", "validation_end")
# a version's tags, as text, by the column they are read into
_TAGS = {
    "window": WINDOW_TAG,  # FIRST..LAST
    "validation_start": VAL_START_TAG,
    "validation_end": VAL_END_TAG,
    "feature_schema": FEATURE_SCHEMA_TAG,
    "sequences_version": SEQUENCES_VERSION_TAG,
    "events_version": EVENTS_VERSION_TAG,
}
# a version as the registry records it, before _typed: creation time in ms, tags as text, metrics
_RECORDED = {
    "version": pl.String,
    "registered_ms": pl.Int64,
    "aliases": pl.List(pl.String),
    **dict.fromkeys(_TAGS, pl.String),
    **dict.fromkeys(METRICS, pl.Float64),
}
DECISIONS = {
    "decided_at": pl.Datetime("us", "UTC"),
    "decided_by": pl.String,
    "action": pl.String,
    "challenger_version": pl.String,
    "challenger_auc": pl.Float64,
    "champion_version": pl.String,  # the champion before the decision
    "champion_auc": pl.Float64,  # same sessions as challenger_auc
    "margin": pl.Float64,
    "validation_start": pl.Date,  # the labelled days both were scored on (null: nothing compared)
    "validation_end": pl.Date,
    "sessions": pl.Int64,
    "champion_after": pl.String,
    "reason": pl.String,
    "decision_id": pl.String,
}


def model_versions(settings: Settings) -> pl.DataFrame:
    """Every registered version, oldest first (VERSIONS columns; nulls where not recorded)."""
    versions = registered_versions(settings)
    aliases = version_aliases(settings)
    metrics = run_metrics(settings, [version.run_id for version in versions if version.run_id])
    recorded = [
        {
            "version": str(version.version),
            "registered_ms": version.creation_timestamp,
            "aliases": aliases.get(str(version.version), []),
            **{column: version.tags.get(tag) for column, tag in _TAGS.items()},
            **{name: metrics.get(version.run_id, {}).get(name) for name in METRICS},
        }
        for version in versions
    ]
    return _typed(pl.DataFrame(recorded, schema=_RECORDED))


def _typed(recorded: pl.DataFrame) -> pl.DataFrame:
    """The registry's text as VERSIONS columns: dates and numbers (null where a tag does not parse),
    the training window split into its first and last day."""
    window = pl.col("window").str.split_exact("..", 1).struct

    def day(text: pl.Expr) -> pl.Expr:
        return text.str.to_date("%Y-%m-%d", strict=False)

    return recorded.select(
        "version",
        registered=pl.from_epoch("registered_ms", time_unit="ms").dt.replace_time_zone("UTC"),
        aliases="aliases",
        train_start=day(window.field("field_0")),
        train_end=day(window.field("field_1")),
        validation_start=day(pl.col("validation_start")),
        validation_end=day(pl.col("validation_end")),
        trained_through=day(pl.col("validation_end")),
        val_auc="val_auc",
        gbm_val_auc="gbm_val_auc",
        feature_schema="feature_schema",
        sequences_version=pl.col("sequences_version").cast(pl.Int64, strict=False),
        events_version=pl.col("events_version").cast(pl.Int64, strict=False),
    ).cast(VERSIONS)


def decisions(settings: Settings) -> pl.DataFrame:
    """Every champion decision, oldest first (DECISIONS columns; AUCs null where nothing was compared)."""
    return _decision_frame(decision_history(settings))


def _decision_frame(history: list[Decision]) -> pl.DataFrame:
    rows = [
        {
            "decided_at": d.decided_at,
            "decided_by": d.decided_by,
            "action": str(d.action),
            "challenger_version": d.challenger_version,
            "challenger_auc": d.challenger_auc,
            "champion_version": d.champion_version,
            "champion_auc": d.champion_auc,
            "margin": d.margin,
            "validation_start": d.window_start,
            "validation_end": d.window_end,
            "sessions": d.sessions,
            "champion_after": d.champion_after,
            "reason": d.reason,
            "decision_id": d.decision_id,
        }
        for d in history
    ]
    frame = pl.DataFrame(rows, schema=DECISIONS)
    return frame.with_columns(pl.col("challenger_auc", "champion_auc", "margin").fill_nan(None))


def write_registry(settings: Settings, fmt: str) -> str:
    """`clickstream models`: the versions and the decisions as two aligned tables (then a one-line
    summary naming the champion and its validation AUCs) or one JSON object {"champion": {...} or
    null, "versions": [...], "decisions": [...]} on stdout (summary on stderr)."""
    recorded = decision_history(settings)  # first: settles what a killed decision left
    versions, history = model_versions(settings), _decision_frame(recorded)
    found = versions.filter(pl.col("aliases").list.contains(CHAMPION)).head(1)
    champion = found.row(0, named=True) if found.height else None
    alias = champion["version"] if champion else None
    summary = (
        f"{settings.model_name}: {versions.height} version(s), {_champion_text(champion)}, "
        f"{history.height} decision(s){_disagreement(alias, recorded_champion(recorded))}"
    )
    if fmt == "json":
        document = {
            "champion": _records(found.select(CHAMPION_FIELDS))[0] if champion else None,
            "versions": _records(versions),
            "decisions": _records(history),
        }
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        print(summary, file=sys.stderr)
        return ""
    if fmt != "table":
        raise ClickstreamError(f"unknown format {fmt!r}; expected table or json")
    listed = versions.with_columns(pl.col("aliases").list.join(", "))
    sys.stdout.write(
        f"model versions\n{format_table(listed)}\nchampion decisions, oldest first\n"
        f"{format_table(history.drop('decision_id'))}\n"
    )
    return summary


def _champion_text(champion: dict[str, object] | None) -> str:
    """The champion for the summary: "champion v2 (validation AUC LSTM 0.7998, GBM 0.8174 on
    2014-04-03..2014-04-04)", its figures left out where its run did not record them."""
    if champion is None:
        return "no champion"
    figures = [f"{label} {champion[name]:.4f}" for name, label in _AUC_LABELS.items() if champion[name] is not None]
    if not figures:
        return f"champion v{champion['version']}"
    days = f" on {champion['validation_start']}..{champion['validation_end']}" if champion["validation_start"] else ""
    return f"champion v{champion['version']} (validation AUC {', '.join(figures)}{days})"


def _disagreement(champion: str | None, recorded: str | None) -> str:
    """ "" when the alias and the history name the same champion, else what is off and the command
    that records it (a person moved the alias outside clickstream, or deleted it)."""
    if champion == recorded:
        return ""
    if champion is None:
        return f"; the history's champion v{recorded} has no alias: `clickstream promote {recorded} --reason ...`"
    history = f"v{recorded}" if recorded else "no champion"
    return (
        f"; the alias was set outside clickstream (the history has {history}): record it with "
        f"`clickstream promote {champion} --reason ...`"
    )


def _records(frame: pl.DataFrame) -> list[dict[str, object]]:
    return json.loads(frame.write_json())
