"""Training-window buy rates and the evidence behind them as model inputs: smoothed, unseen ids at
the prior (evidence 0), and out of fold on the training sessions so that a session's own label
never feeds its own inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features.buy_rates import (
    SMOOTHING,
    BuyCounts,
    count_buyers,
    event_counts,
    evidence_table,
    logit_table,
    session_folds,
)
from clickstream.features.event_ids import EventIds


def _sessions(items: list[list[str]], labels: list[bool | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"session_id": [f"s{n}" for n in range(len(items))], "label": labels, "item_id": items},
        schema={"session_id": pl.String, "label": pl.Boolean, "item_id": pl.List(pl.String)},
    )


def _flat(frame: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
    lengths = frame["item_id"].list.len().to_numpy()
    return frame["item_id"].explode(), np.repeat(np.arange(frame.height), lengths)


@st.composite
def _labelled_sessions(draw: st.DrawFn) -> tuple[list[list[str]], list[bool | None]]:
    """Sessions of item ids (some empty) and a label for each: bought, did not, or unknown (None)."""
    items = draw(st.lists(st.lists(st.sampled_from("abcde"), max_size=4), min_size=1, max_size=30))
    labels = draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=len(items), max_size=len(items)))
    return items, labels


def _logits(frame: pl.DataFrame, rates: BuyCounts, *, out_of_fold: bool, table=logit_table) -> np.ndarray:
    """What the model gets for every item event of `frame` (flat, session order), as load_tensors
    builds it: the buy log-odds, or with `table=evidence_table` the evidence behind them."""
    ids = EventIds.of_lists(frame["item_id"])
    return table(ids.ids, rates, out_of_fold=out_of_fold).of_events(ids, session_folds(frame))


def test_given_a_window_then_counts_take_each_labelled_session_once_per_item():
    frame = _sessions([["a", "a", "b"], ["a"], ["b"], ["a"]], [True, False, False, None])

    rates = count_buyers(frame, "item_id")

    assert rates.counts.to_dicts() == [
        {"id": "a", "sessions": 2, "buyers": 1},
        {"id": "b", "sessions": 2, "buyers": 1},
    ]
    assert rates.prior == 1 / 3


def test_given_an_item_that_sells_then_its_logit_is_higher_and_unseen_ids_get_the_prior():
    frame = _sessions([["hit"]] * 10 + [["flop"]] * 10, [True] * 8 + [False] * 2 + [False] * 10)
    rates = count_buyers(frame, "item_id")

    ids = EventIds.of(pl.Series(["hit", "flop", "never", None]), np.array([4]))
    hit, flop, unseen, missing = logit_table(ids.ids, rates, out_of_fold=False).of_events(ids, None)

    prior = rates.prior
    assert hit > unseen > flop
    assert abs(unseen) < 1e-6 and missing == unseen  # centred on the prior's log-odds
    expected_hit = math.log((8 + SMOOTHING * prior) / (2 + SMOOTHING * (1 - prior))) - math.log(prior / (1 - prior))
    assert math.isclose(hit, expected_hit, rel_tol=1e-5)


@hypothesis_settings(max_examples=30, deadline=None)
@given(
    items=st.lists(st.lists(st.sampled_from("abcde"), min_size=1, max_size=4), min_size=2, max_size=30),
    data=st.data(),
)
def test_property_a_sessions_own_label_never_changes_its_out_of_fold_inputs(items, data):
    labels = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
    row = data.draw(st.integers(0, len(items) - 1))
    flipped = [(not v) if n == row else v for n, v in enumerate(labels)]
    original, changed = _sessions(items, labels), _sessions(items, flipped)
    _, rows = _flat(original)
    rates = count_buyers(original, "item_id")
    # same prior on both sides: only the counts may carry the flipped label
    flipped_rates = dataclasses.replace(count_buyers(changed, "item_id"), prior=rates.prior)

    before = _logits(original, rates, out_of_fold=True)
    after = _logits(changed, flipped_rates, out_of_fold=True)

    assert before.dtype == np.float32 and np.isfinite(before).all()
    np.testing.assert_allclose(after[rows == row], before[rows == row], rtol=1e-6)


@pytest.mark.parametrize("table", [logit_table, evidence_table])
def test_given_shuffled_sessions_then_every_event_keeps_its_inputs(table):
    frame = _sessions([["a", "b"], ["b"], ["c", "a", "a"], ["b", "c"]], [True, False, True, False])
    rates = count_buyers(frame, "item_id")
    _, rows = _flat(frame)
    values = _logits(frame, rates, out_of_fold=True, table=table)

    shuffled = frame[[2, 0, 3, 1]]
    _, shuffled_rows = _flat(shuffled)
    shuffled_values = _logits(shuffled, count_buyers(shuffled, "item_id"), out_of_fold=True, table=table)

    by_session = {s: values[rows == n] for n, s in enumerate(frame["session_id"])}
    for n, session in enumerate(shuffled["session_id"]):
        np.testing.assert_array_equal(shuffled_values[shuffled_rows == n], by_session[session])


# What each buy-rate table counts, in plain Python: does session `items` count for `item`?
COUNTED_BY = {
    "item_id": lambda item, items: item in items,  # the sessions holding it
    "item_id_end": lambda item, items: items[-1:] == [item],  # the sessions ending on it
}


@pytest.mark.parametrize("key", COUNTED_BY)
@hypothesis_settings(max_examples=40, deadline=None)
@given(sessions=_labelled_sessions(), out_of_fold=st.booleans())
def test_property_event_counts_are_the_labelled_sessions_the_table_counts_outside_the_own_fold(
    key, sessions, out_of_fold
):
    items, labels = sessions
    frame = _sessions(items, labels)
    ids, rows = _flat(frame)
    fold = session_folds(frame)

    counts = event_counts(ids, rows, frame, count_buyers(frame, key), out_of_fold=out_of_fold)

    counts_for = COUNTED_BY[key]
    counted = [  # plain Python: the sessions behind each event's id
        [
            s
            for s in range(len(items))
            if labels[s] is not None and counts_for(item, items[s]) and not (out_of_fold and fold[s] == fold[row])
        ]
        for item, row in zip(ids, rows, strict=True)
    ]
    assert counts["sessions"].to_list() == [len(sessions) for sessions in counted]
    assert counts["buyers"].to_list() == [sum(labels[s] for s in sessions) for sessions in counted]


@hypothesis_settings(max_examples=40, deadline=None)
@given(sessions=_labelled_sessions(), out_of_fold=st.booleans())
def test_property_evidence_is_log1p_of_the_labelled_sessions_holding_the_id_outside_the_own_fold(
    sessions, out_of_fold
):
    items, labels = sessions
    frame = _sessions(items, labels)
    ids, rows = _flat(frame)
    fold = session_folds(frame)

    evidence = _logits(frame, count_buyers(frame, "item_id"), out_of_fold=out_of_fold, table=evidence_table)

    counted = [  # plain Python: how many other-fold (or all) labelled sessions hold each event's id
        sum(
            labels[s] is not None and item in items[s] and not (out_of_fold and fold[s] == fold[row])
            for s in range(len(items))
        )
        for item, row in zip(ids, rows, strict=True)
    ]
    assert evidence.dtype == np.float32
    np.testing.assert_allclose(evidence, np.log1p(np.array(counted, dtype=np.float64)), rtol=1e-6)


def test_given_unseen_and_missing_ids_then_their_evidence_is_zero():
    frame = _sessions([["a"], ["a"], ["b"]], [True, False, None])  # "b" only in an unlabelled session
    rates = count_buyers(frame, "item_id")

    ids = EventIds.of(pl.Series(["a", "b", "never", None]), np.array([4]))
    seen, unlabelled, unseen, missing = evidence_table(ids.ids, rates, out_of_fold=False).of_events(ids, None)

    assert seen == np.float32(math.log1p(2))
    assert unlabelled == unseen == missing == 0.0


def test_given_counts_without_their_folds_then_out_of_fold_inputs_are_refused():
    frame = _sessions([["a"], ["b"]], [True, False])
    saved = count_buyers(frame, "item_id")
    reloaded = BuyCounts(saved.counts, saved.prior)  # what Vocabulary.load gives: no counts per fold

    for table in (logit_table, evidence_table):
        with pytest.raises(ValueError, match="counts per fold"):
            _logits(frame, reloaded, out_of_fold=True, table=table)
        assert np.isfinite(_logits(frame, reloaded, out_of_fold=False, table=table)).all()
