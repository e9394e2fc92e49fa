"""The champion decision on its own (no MLflow): the margin, no-ops, refusals, the rollback chain
and the record's round trip."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clickstream.models.evaluation import auc
from clickstream.models.registry.decision import (
    Action,
    Candidate,
    Context,
    Decision,
    gate,
    manual,
    previous_champion,
    rollback,
)
from clickstream.pipeline.core.errors import PromotionError

SCHEMA = "schema-a"
WINDOW = (dt.date(2014, 4, 3), dt.date(2014, 4, 4))
NOW = dt.datetime(2014, 4, 5, 3, 0, tzinfo=dt.UTC)
RNG = np.random.default_rng(0)
LABELS = RNG.random(400) < 0.3
GOOD = (LABELS + RNG.normal(0, 0.8, LABELS.size)).astype(np.float32)  # AUC about 0.8
WORSE = (LABELS + RNG.normal(0, 1.6, LABELS.size)).astype(np.float32)  # about 0.65
GAIN = auc(LABELS, GOOD) - auc(LABELS, WORSE)


def context(margin: float = 0.0) -> Context:
    return Context("nightly (airflow@worker)", NOW, margin)


def scored(version: str, scores: np.ndarray, schema: str | None = SCHEMA) -> Candidate:
    return Candidate(version, schema, scores=scores)


def test_given_a_gain_when_the_margin_is_just_below_or_at_it_then_promoted_or_rejected() -> None:
    assert GAIN > 0.05

    below = gate(scored("2", GOOD), scored("1", WORSE), LABELS, WINDOW, context(GAIN - 1e-9))
    at = gate(scored("2", GOOD), scored("1", WORSE), LABELS, WINDOW, context(GAIN))

    assert below.action is Action.PROMOTED and below.champion_after == "2"
    assert at.action is Action.REJECTED and at.champion_after == "1"
    assert at.challenger_auc == auc(LABELS, GOOD) and at.champion_auc == auc(LABELS, WORSE)
    assert (at.margin, at.sessions, at.window_start, at.window_end) == (GAIN, 400, *WINDOW)
    assert "does not beat champion v1's" in at.reason and "\n" not in str(at)


def test_given_equal_scores_when_gated_without_margin_then_a_tie_keeps_the_champion() -> None:
    decision = gate(scored("2", GOOD), scored("1", GOOD.copy()), LABELS, WINDOW, context())

    assert decision.action is Action.REJECTED and decision.challenger_auc == decision.champion_auc


def test_given_no_champion_when_gated_then_promoted_and_the_champion_auc_is_nan() -> None:
    decision = gate(scored("1", WORSE), None, LABELS, WINDOW, context(0.5))

    assert decision.action is Action.PROMOTED and decision.champion_version is None
    assert math.isnan(decision.champion_auc) and decision.reason == "there was no champion"


def test_given_the_champion_itself_when_gated_then_a_no_op_not_a_rejection() -> None:
    champion = scored("1", GOOD)

    decision = gate(champion, champion, LABELS, WINDOW, context())

    assert decision.action is Action.NO_OP and decision.champion_after == "1" and not decision.moves_champion
    assert decision.reason == "it already is the champion"


@pytest.mark.parametrize(
    ("champion", "message"),
    [
        (Candidate("1", SCHEMA, load_error="cannot download model models:/m/1: gone"), "cannot be loaded"),
        (Candidate("1", "schema-b"), "feature schema schema-b"),
    ],
)
def test_given_a_champion_that_cannot_be_compared_when_a_bad_challenger_is_gated_then_an_error_not_a_free_pass(
    champion: Candidate, message: str
) -> None:
    bad = scored("2", -GOOD)  # AUC about 0.2

    with pytest.raises(PromotionError, match=message) as error:
        gate(bad, champion, LABELS, WINDOW, context())

    assert "v1 stays champion, v2 stays challenger" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (Candidate("3", SCHEMA, load_error="no MLmodel file"), "v3 cannot be loaded"),
        (Candidate("3", "schema-b"), "v3 was trained on feature schema schema-b, this code builds schema-a"),
        (Candidate("3", None), "an unrecorded schema"),
    ],
)
def test_given_a_version_that_cannot_serve_when_promoted_by_hand_then_refused(
    candidate: Candidate, message: str
) -> None:
    with pytest.raises(PromotionError, match=message):
        manual(candidate, "1", SCHEMA, "hotfix", context())


def test_given_a_usable_version_when_promoted_by_hand_then_manual_with_the_reason_and_no_aucs() -> None:
    decision = manual(Candidate("3", SCHEMA), "1", SCHEMA, "v1 drifts on mobile traffic", context(0.01))

    assert decision.action is Action.MANUAL and decision.champion_after == "3" and decision.champion_version == "1"
    assert decision.reason == "v1 drifts on mobile traffic" and math.isnan(decision.challenger_auc)
    assert manual(Candidate("1", SCHEMA), "1", SCHEMA, "again", context()).action is Action.NO_OP


def decided(action: Action, version: str, champion: str | None = None) -> Decision:
    return Decision(NOW, "test", action, version, math.nan, champion, math.nan, 0.0, "", None, None, 0)


def test_given_promotions_and_rollbacks_when_the_previous_champion_is_asked_then_the_chain_unwinds() -> None:
    history = [
        decided(Action.PROMOTED, "1"),
        decided(Action.REJECTED, "2", "1"),
        decided(Action.PROMOTED, "3", "1"),
        decided(Action.NO_OP, "3", "3"),
        decided(Action.MANUAL, "4", "3"),
    ]
    assert previous_champion(history, "4") == "3"
    history.append(decided(Action.ROLLBACK, "3", "4"))
    assert previous_champion(history, "3") == "1"
    history.append(decided(Action.ROLLBACK, "1", "3"))
    with pytest.raises(PromotionError, match="no champion before v1"):
        previous_champion(history, "1")
    with pytest.raises(PromotionError, match="champion v2 was not set through clickstream"):
        previous_champion(history, "2")


def test_given_a_target_other_than_the_previous_champion_when_rolled_back_then_refused() -> None:
    history = [decided(Action.PROMOTED, "1"), decided(Action.PROMOTED, "2", "1")]

    restored = rollback(history, "2", Candidate("1", SCHEMA), SCHEMA, "bad scores", context())

    assert restored.action is Action.ROLLBACK and restored.champion_after == "1"
    assert restored.reason == "rolled back from v2: bad scores"
    with pytest.raises(PromotionError, match="previous champion is v1, not v2"):
        rollback(history, "2", Candidate("2", SCHEMA), SCHEMA, "x", context())
    with pytest.raises(PromotionError, match="v1 cannot be loaded"):
        rollback(history, "2", Candidate("1", SCHEMA, load_error="gone"), SCHEMA, "x", context())


@given(
    st.sampled_from(list(Action)),
    st.floats(allow_infinity=False),
    st.one_of(st.none(), st.text(min_size=1).filter(lambda t: t.strip() == t)),
    st.text(),
    st.one_of(st.none(), st.dates()),
)
def test_given_any_decision_when_recorded_and_read_back_then_it_is_the_same(action, value, champion, reason, day):
    decision = Decision(
        NOW, "cli:promote (ana@laptop)", action, "7", value, champion, value, 0.002, reason, day, day, 12, "id"
    )

    back = Decision.from_record("id", decision.to_record())

    assert back.to_record() == decision.to_record()
    assert back.challenger_auc == value or (math.isnan(value) and math.isnan(back.challenger_auc))
