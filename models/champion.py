"""Moving the `champion` alias: gather the evidence (registry tags, the lake's labelled sessions,
both models' scores), let models.promotion decide, and append the decision to the history
(models.registry). The same functions serve `clickstream train --promote`, `clickstream promote`,
`clickstream rollback` and the nightly DAG's promote task.

Every call appends one record and never alters an earlier one, so re-running a day adds a no-op
(or the same verdict again) beside the first decision instead of rewriting it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import socket

import polars as pl

from clickstream.features.sequences import read_sequences
from clickstream.features.tensor_loader import feature_schema
from clickstream.models.promotion import Candidate, Context, Decision, gate, manual, previous_champion, rollback
from clickstream.models.registry import (
    FEATURE_SCHEMA_TAG,
    VAL_END_TAG,
    VAL_START_TAG,
    alias_version,
    decision_records,
    record_decision,
    version_tags,
)
from clickstream.models.scorer import Scorer, load_scorer
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError, ModelNotFoundError, NoDataError, PromotionError
from clickstream.pipeline.core.lake import Lake

MAX_REASON = 500  # characters of a person's --reason


def actor(kind: str) -> str:
    """Who decides: `kind` (nightly, cli:train, cli:promote, cli:rollback) and user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = "unknown"
    return f"{kind} ({user}@{socket.gethostname()})"


def gate_challenger(
    settings: Settings,
    version: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    *,
    decided_by: str,
) -> Decision:
    """The champion gate for `version` on the labelled sessions starting in [start, end]
    (default: its own validation days), both models scored now, each through its own vocabulary.
    Records and returns the decision; PromotionError (nothing recorded, aliases unchanged) when
    the champion cannot be loaded or compared."""
    tags = version_tags(settings, version)
    start = start or _tag_date(tags, VAL_START_TAG, version)
    end = end or _tag_date(tags, VAL_END_TAG, version)
    frame = read_sequences(Lake(settings.lake), start, end)
    frame = frame.filter(frame["label"].is_not_null())
    if frame.is_empty():
        raise NoDataError(
            f"no labelled sessions in sequences/ of lake {Lake(settings.lake)} between {start} and {end} "
            "to compare models on"
        )
    challenger = _scored(_load(settings, version), tags, frame)  # a challenger that cannot load is a plain error
    champion_version = alias_version(settings, CHAMPION)
    champion = None
    if champion_version == version:
        champion = challenger
    elif champion_version is not None:
        champion = _champion(settings, champion_version, challenger.feature_schema, frame)
    decision = gate(challenger, champion, frame["label"].to_numpy(), (start, end), _context(settings, decided_by))
    return _record(settings, decision)


def promote_version(settings: Settings, version: str, reason: str, *, decided_by: str) -> Decision:
    """Make `version` champion by hand (no AUC gate), recorded with `reason`; PromotionError when
    it cannot be loaded or takes another feature schema than this code builds."""
    reason = _checked_reason(reason)
    candidate = _loadable(settings, version, version_tags(settings, version))
    champion = alias_version(settings, CHAMPION)
    return _record(settings, manual(candidate, champion, feature_schema(), reason, _context(settings, decided_by)))


def rollback_champion(settings: Settings, reason: str, *, decided_by: str) -> Decision:
    """Move the champion back to the previous one per the history, recorded with `reason`;
    PromotionError when there is none or it cannot be loaded."""
    reason = _checked_reason(reason)
    history = decision_history(settings)
    champion = alias_version(settings, CHAMPION)
    target = previous_champion(history, champion)
    candidate = _loadable(settings, target, version_tags(settings, target))
    context = _context(settings, decided_by)
    return _record(settings, rollback(history, champion, candidate, feature_schema(), reason, context))


def decision_history(settings: Settings) -> list[Decision]:
    """Every recorded decision, oldest first."""
    return [Decision.from_record(run_id, fields) for run_id, fields in decision_records(settings)]


def _record(settings: Settings, decision: Decision) -> Decision:
    champion = decision.challenger_version if decision.moves_champion else None
    return dataclasses.replace(decision, decision_id=record_decision(settings, decision.to_record(), champion))


def _context(settings: Settings, decided_by: str) -> Context:
    return Context(decided_by, dt.datetime.now(dt.UTC), settings.promotion_margin)


def _load(settings: Settings, version: str) -> Scorer:
    return load_scorer(settings, f"models:/{settings.model_name}/{version}", device="cpu")


def _scored(scorer: Scorer, tags: dict[str, str], frame: pl.DataFrame) -> Candidate:
    return Candidate(scorer.model_version, tags.get(FEATURE_SCHEMA_TAG), scores=scorer.score(frame))


def _champion(settings: Settings, version: str, challenger_schema: str | None, frame: pl.DataFrame) -> Candidate:
    """The champion, scored on `frame` when it loads and takes the challenger's feature schema."""
    try:
        tags = version_tags(settings, version)
        scorer = _load(settings, version)
    except ClickstreamError as error:
        return Candidate(version, None, load_error=str(error))
    schema = tags.get(FEATURE_SCHEMA_TAG)
    if None not in (schema, challenger_schema) and schema != challenger_schema:
        return Candidate(version, schema)  # the gate refuses the comparison
    return _scored(scorer, tags, frame)


def _loadable(settings: Settings, version: str, tags: dict[str, str]) -> Candidate:
    """`version` with its feature schema, and the load error when it cannot be loaded."""
    try:
        _load(settings, version)
    except ClickstreamError as error:
        return Candidate(version, tags.get(FEATURE_SCHEMA_TAG), load_error=str(error))
    return Candidate(version, tags.get(FEATURE_SCHEMA_TAG))


def _checked_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise PromotionError("give a --reason: it is kept in the champion's history")
    if len(text) > MAX_REASON:
        raise PromotionError(f"--reason is {len(text)} characters; at most {MAX_REASON} are kept")
    return text


def _tag_date(tags: dict[str, str], key: str, version: str) -> dt.date:
    if key not in tags:
        raise ModelNotFoundError(f"model version {version} has no {key} tag; pass the comparison window explicitly")
    return dt.date.fromisoformat(tags[key])
