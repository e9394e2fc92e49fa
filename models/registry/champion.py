"""Moving the `champion` alias: gather the evidence (registry tags, the lake's labelled sessions,
both models' scores), let registry.decision decide, and append the decision to the history
(registry.store). The same functions serve `clickstream train --promote`, `clickstream promote`,
`clickstream rollback` and the nightly DAG's promote task.

Every call appends one record and never alters an earlier one, so re-running a day adds a no-op
(or the same verdict again) beside the first decision instead of rewriting it.

A decision is taken on one reading of the history and the champion (store.DecisionLog) and
recorded with the alias as one transaction (store.record_decision); when another decision was
recorded meanwhile, it is taken again on the new reading (DECISION_ATTEMPTS at most), so that two
decisions at once serialize and never both act on the same champion.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from clickstream.features.sequences import read_sequences
from clickstream.models.registry.decision import (
    Candidate,
    Context,
    Decision,
    gate,
    manual,
    previous_champion,
    rollback,
)
from clickstream.models.registry.loading import load_model
from clickstream.models.registry.store import (
    FEATURE_SCHEMA_TAG,
    VAL_END_TAG,
    VAL_START_TAG,
    DecisionConflict,
    DecisionLog,
    decision_log,
    record_decision,
    version_tags,
)
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError, ModelNotFoundError, NoDataError, PromotionError
from clickstream.pipeline.core.lake import Lake

if TYPE_CHECKING:
    from clickstream.models.bundle import ModelBundle

MAX_REASON = 500  # characters of a person's --reason
DECISION_ATTEMPTS = 3  # readings of the history a decision is taken on before it gives up (DecisionConflict)


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
    lake = Lake(settings.lake, settings.buckets)
    frame = read_sequences(lake, start, end)
    frame = frame.filter(frame["label"].is_not_null())
    if frame.is_empty():
        raise NoDataError(
            f"no labelled sessions in sequences/ of lake {lake} between {start} and {end} to compare models on"
        )
    challenger = _scored(_load(settings, version), tags, frame)  # a challenger that cannot load is a plain error
    labels = frame["label"].to_numpy()
    champions: dict[str, Candidate] = {}  # scored once, whichever reading of the history needs them

    def decide(log: DecisionLog) -> Decision:
        champion = None
        if log.champion == version:
            champion = challenger
        elif log.champion is not None:
            if log.champion not in champions:
                champions[log.champion] = _champion(settings, log.champion, challenger.feature_schema, frame)
            champion = champions[log.champion]
        return gate(challenger, champion, labels, (start, end), _context(settings, decided_by))

    return _transact(settings, decide)


def promote_version(settings: Settings, version: str, reason: str, *, decided_by: str) -> Decision:
    """Make `version` champion by hand (no AUC gate), recorded with `reason`; PromotionError when
    it cannot be loaded or takes another feature schema than this code builds. When the alias
    already points at it but the history does not say so, the promotion is recorded (heals them)."""
    reason = _checked_reason(reason)
    candidate = _loadable(settings, version, version_tags(settings, version))

    def decide(log: DecisionLog) -> Decision:
        context = _context(settings, decided_by)
        return manual(candidate, log.champion, _code_schema(), reason, context, history=_decisions(log))

    return _transact(settings, decide)


def rollback_champion(settings: Settings, reason: str, *, decided_by: str) -> Decision:
    """Move the champion back to the previous one per the history, recorded with `reason`;
    PromotionError when there is none or it cannot be loaded."""
    reason = _checked_reason(reason)
    targets: dict[str, Candidate] = {}

    def decide(log: DecisionLog) -> Decision:
        history = _decisions(log)
        target = previous_champion(history, log.champion)
        if target not in targets:
            targets[target] = _loadable(settings, target, version_tags(settings, target))
        context = _context(settings, decided_by)
        return rollback(history, log.champion, targets[target], _code_schema(), reason, context)

    return _transact(settings, decide)


def decision_history(settings: Settings) -> list[Decision]:
    """Every recorded decision, oldest first (after settling what a killed decision left)."""
    return _decisions(decision_log(settings))


def _decisions(log: DecisionLog) -> list[Decision]:
    return [Decision.from_record(record.id, record.fields) for record in log.records]


def _transact(settings: Settings, decide: Callable[[DecisionLog], Decision]) -> Decision:
    """Take the decision on the current history and champion and record it as one transaction with
    the alias; taken again when another decision landed in between (DecisionConflict after
    DECISION_ATTEMPTS readings)."""
    for attempt in range(1, DECISION_ATTEMPTS + 1):
        log = decision_log(settings)
        decision = decide(log)
        try:
            decision_id = record_decision(
                settings,
                decision.to_record(),
                champion_after=decision.champion_after,
                moves=decision.moves_champion,
                basis=log,
            )
        except DecisionConflict:
            if attempt == DECISION_ATTEMPTS:
                raise
            continue
        return dataclasses.replace(decision, decision_id=decision_id)
    raise AssertionError("unreachable")


def _context(settings: Settings, decided_by: str) -> Context:
    return Context(decided_by, dt.datetime.now(dt.UTC), settings.promotion_margin)


def _code_schema() -> str:
    """The feature schema this code builds. Its module loads torch, which only the moves that load a
    model need: reading the history (`clickstream models`) imports this module without it."""
    from clickstream.features.tensor_loader import feature_schema

    return feature_schema()


def _load(settings: Settings, version: str) -> ModelBundle:
    return load_model(settings, f"models:/{settings.model_name}/{version}", device="cpu")


def _scored(model: ModelBundle, tags: dict[str, str], frame: pl.DataFrame) -> Candidate:
    return Candidate(model.model_version, tags.get(FEATURE_SCHEMA_TAG), scores=model.score(frame))


def _champion(settings: Settings, version: str, challenger_schema: str | None, frame: pl.DataFrame) -> Candidate:
    """The champion, scored on `frame` when it loads and takes the challenger's feature schema."""
    try:
        tags = version_tags(settings, version)
        model = _load(settings, version)
    except ClickstreamError as error:
        return Candidate(version, None, load_error=str(error))
    schema = tags.get(FEATURE_SCHEMA_TAG)
    if None not in (schema, challenger_schema) and schema != challenger_schema:
        return Candidate(version, schema)  # the gate refuses the comparison
    return _scored(model, tags, frame)


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
