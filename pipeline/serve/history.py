"""The registry as tables (`clickstream models`, the report): every model version with its aliases
and the window it saw, and every champion decision in the order it was taken."""

from __future__ import annotations

import datetime as dt
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
    WINDOW_TAG,
    alias_version,
    registered_versions,
    run_metrics,
)
from clickstream.pipeline.core.config import CHALLENGER, CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.serve.output import format_table

VERSIONS = {
    "version": pl.String,
    "registered": pl.Datetime("us", "UTC"),
    "aliases": pl.String,  # "champion", "challenger", both comma-separated, or ""
    "window": pl.String,  # FIRST..LAST, the training window asked for
    "trained_through": pl.Date,  # the last day of sessions the model saw (its last validation day)
    "val_auc": pl.Float64,  # on its own validation days
    "gbm_val_auc": pl.Float64,
    "feature_schema": pl.String,
    "sequences_version": pl.Int64,  # the `sequences` Delta version it learned from (`train --as-of`)
    "events_version": pl.Int64,  # the `events` version those sequences were built from
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
    "window": pl.String,  # the comparison's validation days
    "sessions": pl.Int64,
    "champion_after": pl.String,
    "reason": pl.String,
    "decision_id": pl.String,
}


def model_versions(settings: Settings) -> pl.DataFrame:
    """Every registered version, oldest first (VERSIONS columns; nulls where not recorded)."""
    aliases = {alias: alias_version(settings, alias) for alias in (CHAMPION, CHALLENGER)}
    versions = registered_versions(settings)
    trained = run_metrics(settings, [version.run_id for version in versions if version.run_id])
    rows = []
    for version in versions:
        number, tags = str(version.version), version.tags
        metrics = trained.get(version.run_id, {}) if version.run_id else {}
        rows.append(
            {
                "version": number,
                "registered": dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC),
                "aliases": ", ".join(alias for alias, holder in aliases.items() if holder == number),
                "window": tags.get(WINDOW_TAG),
                "trained_through": dt.date.fromisoformat(tags[VAL_END_TAG]) if VAL_END_TAG in tags else None,
                "val_auc": metrics.get("val_auc"),
                "gbm_val_auc": metrics.get("gbm_val_auc"),
                "feature_schema": tags.get(FEATURE_SCHEMA_TAG),
                "sequences_version": _number(tags.get(SEQUENCES_VERSION_TAG)),
                "events_version": _number(tags.get(EVENTS_VERSION_TAG)),
            }
        )
    return pl.DataFrame(rows, schema=VERSIONS)


def _number(tag: str | None) -> int | None:
    """A version tag as a number (None where not recorded: versions trained before tables had versions)."""
    return int(tag) if tag and tag.isdigit() else None


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
            "window": f"{d.window_start}..{d.window_end}" if d.window_start else None,
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
    summary) or one JSON object {"versions": [...], "decisions": [...]} on stdout (summary on stderr)."""
    recorded = decision_history(settings)  # first: settles what a killed decision left
    versions, history = model_versions(settings), _decision_frame(recorded)
    champion = versions.filter(pl.col("aliases").str.contains(CHAMPION))["version"].to_list()
    summary = (
        f"{settings.model_name}: {versions.height} version(s), "
        f"{'champion v' + champion[0] if champion else 'no champion'}, {history.height} decision(s)"
        f"{_disagreement(champion[0] if champion else None, recorded_champion(recorded))}"
    )
    if fmt == "json":
        document = {"versions": _records(versions), "decisions": _records(history)}
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        print(summary, file=sys.stderr)
        return ""
    if fmt != "table":
        raise ClickstreamError(f"unknown format {fmt!r}; expected table or json")
    sys.stdout.write(
        f"model versions\n{format_table(versions)}\nchampion decisions, oldest first\n"
        f"{format_table(history.drop('decision_id'))}\n"
    )
    return summary


def _disagreement(champion: str | None, recorded: str | None) -> str:
    """"" when the alias and the history name the same champion, else what is off and the command
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
