"""What to do with the `champion` alias, decided from evidence alone: no MLflow, no lake, no clock.

Three ways the champion moves, each returning one `Decision` (the record the history keeps):
- `gate`: a challenger replaces the champion only if its AUC, on the same labelled validation
  sessions, beats the champion's by more than the margin. A champion that could not be loaded,
  or whose feature schema differs from the challenger's, cannot be compared: PromotionError,
  never a free pass.
- `manual`: a person promotes a version, skipping the AUC gate but not the checks that it loads
  and takes the inputs this code builds.
- `rollback`: the champion goes back to the one before it, per the history (`previous_champion`).

A version that already is the champion gives a no-op decision, never a rejection.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import StrEnum

import numpy as np

from clickstream.pipeline.core.errors import PromotionError


class Action(StrEnum):
    PROMOTED = "promoted"  # the gate: the challenger beat the champion by more than the margin
    REJECTED = "rejected"  # the gate: it did not; the champion stays
    NO_OP = "no-op"  # the version already is the champion
    MANUAL = "manual-promote"  # `clickstream promote`: a person's choice, no AUC gate
    ROLLBACK = "rollback"  # `clickstream rollback`: back to the previous champion


MOVES_CHAMPION = frozenset({Action.PROMOTED, Action.MANUAL, Action.ROLLBACK})


@dataclass(frozen=True)
class Candidate:
    """One model version as a decision sees it: its feature schema (None: not recorded) and,
    when it was loaded and scored, its scores on the comparison sessions (else the load error)."""

    version: str
    feature_schema: str | None
    scores: np.ndarray | None = None
    load_error: str | None = None


@dataclass(frozen=True)
class Decision:
    """One decision about the champion, as recorded. `challenger_*` is the version the decision
    is about (for a rollback: the version restored), `champion_*` the champion before it; AUCs
    are on the same `sessions` labelled sessions of window_start..window_end (NaN and no window
    where nothing was compared)."""

    decided_at: dt.datetime  # UTC
    decided_by: str  # nightly / cli:train / cli:promote / cli:rollback, with user@host
    action: Action
    challenger_version: str
    challenger_auc: float
    champion_version: str | None
    champion_auc: float
    margin: float  # NaN where no AUC gate applied (by hand, rollback)
    reason: str
    window_start: dt.date | None
    window_end: dt.date | None
    sessions: int
    decision_id: str = ""  # the record's id once recorded

    @property
    def moves_champion(self) -> bool:
        return self.action in MOVES_CHAMPION

    @property
    def champion_after(self) -> str | None:
        return self.challenger_version if self.moves_champion else self.champion_version

    def __str__(self) -> str:
        verdict = {
            Action.PROMOTED: "promoted to champion",
            Action.REJECTED: "not promoted",
            Action.NO_OP: "unchanged",
            Action.MANUAL: "promoted to champion by hand",
            Action.ROLLBACK: "restored as champion",
        }[self.action]
        return f"v{self.challenger_version} {verdict}: {self.reason}"

    def to_record(self) -> dict[str, str]:
        """The decision as text fields (every field but decision_id), for the history."""
        return {
            field.name: _text(getattr(self, field.name)) for field in fields(self) if field.name != "decision_id"
        }

    @classmethod
    def from_record(cls, decision_id: str, record: dict[str, str]) -> Decision:
        """A recorded decision back (the inverse of to_record)."""

        def date(key: str) -> dt.date | None:
            return dt.date.fromisoformat(record[key]) if record.get(key) else None

        return cls(
            decided_at=dt.datetime.fromisoformat(record["decided_at"]),
            decided_by=record["decided_by"],
            action=Action(record["action"]),
            challenger_version=record["challenger_version"],
            challenger_auc=float(record["challenger_auc"]),
            champion_version=record["champion_version"] or None,
            champion_auc=float(record["champion_auc"]),
            margin=float(record["margin"]),
            reason=record["reason"],
            window_start=date("window_start"),
            window_end=date("window_end"),
            sessions=int(record["sessions"]),
            decision_id=decision_id,
        )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; nan for "not compared"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class Context:
    """Who decides, when, and under which margin."""

    decided_by: str
    decided_at: dt.datetime
    margin: float


def gate(
    challenger: Candidate,
    champion: Candidate | None,
    labels: np.ndarray,
    window: tuple[dt.date, dt.date],
    context: Context,
) -> Decision:
    """The champion gate on the same labelled sessions (`labels`, in the scores' row order).

    Promoted when there is no champion, or when the challenger's AUC exceeds the champion's by
    more than context.margin (a tie, NaN or a smaller gain keeps the champion: rejected). No-op
    when the challenger already is the champion. PromotionError when the champion could not be
    loaded or was trained on another feature schema: the gate cannot judge, the champion stays.
    """
    from clickstream.models.evaluation import auc  # sklearn and torch: a reader of the history never needs them

    if challenger.scores is None:
        raise PromotionError(f"challenger v{challenger.version} was not scored: {challenger.load_error}")
    challenger_auc = auc(labels, challenger.scores)

    def decision(action: Action, champion_auc: float, reason: str) -> Decision:
        return Decision(
            context.decided_at,
            context.decided_by,
            action,
            challenger.version,
            challenger_auc,
            champion.version if champion else None,
            champion_auc,
            context.margin,
            reason,
            window[0],
            window[1],
            len(labels),
        )

    if champion is None:
        return decision(Action.PROMOTED, math.nan, "there was no champion")
    if champion.version == challenger.version:
        return decision(Action.NO_OP, challenger_auc, "it already is the champion")
    keep = f"v{champion.version} stays champion, v{challenger.version} stays challenger"
    if champion.load_error is not None:
        raise PromotionError(f"champion v{champion.version} cannot be loaded ({champion.load_error}): {keep}")
    if None not in (champion.feature_schema, challenger.feature_schema) and (
        champion.feature_schema != challenger.feature_schema
    ):
        raise PromotionError(
            f"champion v{champion.version} takes feature schema {champion.feature_schema} and challenger "
            f"v{challenger.version} {challenger.feature_schema}; they cannot be compared: {keep} "
            f"(promote by hand with `clickstream promote {challenger.version} --reason ...`)"
        )
    if champion.scores is None:
        raise PromotionError(f"champion v{champion.version} was not scored: {keep}")
    champion_auc = auc(labels, champion.scores)
    gain = challenger_auc - champion_auc
    promoted = gain > context.margin  # NaN compares False: keep the champion
    relation = "beats" if promoted else "does not beat"
    reason = (
        f"AUC {challenger_auc:.4f} {relation} champion v{champion.version}'s {champion_auc:.4f} by more than "
        f"the margin {context.margin:.4f} (gain {gain:+.4f}) on {len(labels):,} sessions of {window[0]}..{window[1]}"
    )
    return decision(Action.PROMOTED if promoted else Action.REJECTED, champion_auc, reason)


def manual(
    version: Candidate,
    champion: str | None,
    expected_schema: str,
    reason: str,
    context: Context,
    *,
    history: Sequence[Decision] | None = None,
) -> Decision:
    """A person's promotion of `version`, without the AUC gate. PromotionError when it could not
    be loaded, or when its feature schema is not `expected_schema` (the inputs this code builds).
    No-op when it already is the champion and the `history` (when given) says so too; when only the
    alias says so (it was set outside clickstream, or by a decision whose record was lost), the
    promotion is recorded, so that the history agrees with the alias again."""
    _check_usable(version, expected_schema, "promoted")
    recorded = champion if history is None else recorded_champion(history)
    if version.version == champion == recorded:
        return _unscored(Action.NO_OP, version.version, champion, "it already is the champion", context)
    if version.version == champion:
        before = f"v{recorded}" if recorded else "no champion"
        reason = f"{reason} (records v{champion}, already behind the alias, where the history had {before})"
    return _unscored(Action.MANUAL, version.version, champion, reason, context)


def rollback(
    history: Sequence[Decision], champion: str | None, target: Candidate, expected_schema: str, reason: str,
    context: Context,
) -> Decision:
    """The champion back to `target`, which must be previous_champion(history, champion), load,
    and take `expected_schema`; PromotionError otherwise."""
    expected = previous_champion(history, champion)
    if target.version != expected:
        raise PromotionError(f"the previous champion is v{expected}, not v{target.version}")
    _check_usable(target, expected_schema, "restored")
    return _unscored(Action.ROLLBACK, target.version, champion, f"rolled back from v{champion}: {reason}", context)


def recorded_champion(history: Sequence[Decision]) -> str | None:
    """The champion per the history (oldest first): the last one pushed and not rolled back."""
    chain = _chain(history)
    return chain[-1] if chain else None


def previous_champion(history: Sequence[Decision], champion: str | None) -> str:
    """The champion before `champion` per the history (oldest first): promotions push the new
    champion, rollbacks pop the current one. PromotionError when there is none, or when the
    history does not end with `champion` (the alias was moved outside clickstream)."""
    chain = _chain(history)
    if champion is None:
        raise PromotionError("there is no champion to roll back")
    if not chain or chain[-1] != champion:
        last = f"v{chain[-1]}" if chain else "no champion"
        raise PromotionError(
            f"champion v{champion} was not set through clickstream (the history ends with {last}); "
            f"record it with `clickstream promote {champion} --reason ...` or choose another with "
            "`clickstream promote VERSION --reason ...`"
        )
    if len(chain) < 2:
        raise PromotionError(f"the history holds no champion before v{champion} to roll back to")
    return chain[-2]


def _chain(history: Sequence[Decision]) -> list[str]:
    chain: list[str] = []
    for decision in history:
        if decision.action in (Action.PROMOTED, Action.MANUAL):
            chain.append(decision.challenger_version)
        elif decision.action is Action.ROLLBACK and chain:
            chain.pop()
    return chain


def _check_usable(candidate: Candidate, expected_schema: str, verb: str) -> None:
    if candidate.load_error is not None:
        raise PromotionError(f"v{candidate.version} cannot be loaded ({candidate.load_error}): not {verb}")
    if candidate.feature_schema != expected_schema:
        trained = candidate.feature_schema or "an unrecorded schema"
        raise PromotionError(
            f"v{candidate.version} was trained on feature schema {trained}, this code builds {expected_schema}: "
            f"not {verb}"
        )


def _unscored(action: Action, version: str, champion: str | None, reason: str, context: Context) -> Decision:
    return Decision(
        context.decided_at, context.decided_by, action, version, math.nan, champion, math.nan, math.nan,
        reason, None, None, 0,
    )
