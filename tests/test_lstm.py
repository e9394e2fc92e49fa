"""The packed-sequence LSTM: the packed path computes what the padded textbook path does,
without ever touching padding."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.features.tensors import CONTINUOUS_FEATURES, SequenceTensors
from clickstream.models.lstm import SESSION_INPUTS, BuyIntentLSTM, PackedLayout, event_summands, session_inputs
from clickstream.pipeline.core.config import ModelConfig
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, sessions_with_lengths

N_ITEMS = 40


def tiny_model(num_layers: int = 2, seed: int = 0, **head: object) -> BuyIntentLSTM:
    torch.manual_seed(seed)
    config = ModelConfig(item_dim=6, category_dim=3, event_type_dim=2, hidden_size=8, num_layers=num_layers, **head)
    return BuyIntentLSTM(config, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS).eval()


def sessions(lengths: list[int], seed: int = 0) -> SequenceTensors:
    return sessions_with_lengths(np.array(lengths), seed=seed, n_items=N_ITEMS)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=10), layers=st.integers(1, 2))
def test_given_any_sessions_when_scored_packed_then_equal_to_the_padded_reference(lengths, layers):
    model, batch = tiny_model(layers), sessions(lengths)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model.forward_padded(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "head",
    [
        {"max_pool": False, "session_inputs": False, "last_event": False, "head_hidden": 0},  # the final state alone
        {"max_pool": True, "session_inputs": False, "last_event": False, "head_hidden": 0},
        {"max_pool": False, "session_inputs": True, "last_event": False, "head_hidden": 8},
        {"max_pool": False, "session_inputs": False, "last_event": True, "head_hidden": 0},
        {"max_pool": True, "session_inputs": True, "last_event": True, "head_hidden": 8, "head_linear": False},
    ],
)
def test_given_each_head_when_scored_packed_then_equal_to_the_padded_reference_and_the_last_step(head):
    model, batch = tiny_model(1, **head), sessions([3, 1, 9, 4, 4])
    with torch.no_grad():
        logits = model(batch)
        torch.testing.assert_close(logits, model.forward_padded(batch), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.step_logits(batch)[batch.offsets[1:] - 1], logits, atol=1e-5, rtol=1e-5)


def test_given_sessions_then_session_inputs_are_their_counts_duration_and_input_means():
    batch = sessions([3, 1, 5])
    layout = PackedLayout(batch.offsets)
    continuous = batch.continuous(layout.session_of_event, layout.step)
    summands = event_summands(continuous)
    sums = torch.zeros(3, summands.shape[1], dtype=torch.float64).index_add_(0, layout.session_of_event, summands)
    inputs = dict(zip(SESSION_INPUTS, session_inputs(sums).unbind(1), strict=True))
    torch.testing.assert_close(inputs["log_events"], torch.log1p(torch.tensor([3.0, 1.0, 5.0])))
    repeat = continuous[:, CONTINUOUS_FEATURES.index("item_repeat")]
    expected = torch.stack([repeat[0:3].mean(), repeat[3:4].mean(), repeat[4:9].mean()])
    torch.testing.assert_close(inputs["repeat_share"], expected)
    for name in ("item_buy_logit", "category_buy_logit"):
        column = continuous[:, CONTINUOUS_FEATURES.index(name)]
        expected = torch.stack([column[0:3].mean(), column[3:4].mean(), column[4:9].mean()])
        torch.testing.assert_close(inputs[f"{name}_mean"], expected, msg=name)
    seconds = torch.expm1(continuous[:, CONTINUOUS_FEATURES.index("log_gap_prev")].clamp(min=0).double())
    torch.testing.assert_close(inputs["log_duration"][2], torch.log1p(seconds[4:9].sum()).float())


def test_given_a_session_when_batched_with_much_longer_ones_then_its_score_does_not_change():
    model = tiny_model()
    batch = sessions([3, 40, 1, 25])
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch.select(torch.tensor([i]))) for i in range(4)])
        padded = model.forward_padded(batch)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_given_a_batch_when_sessions_are_reordered_then_scores_follow_their_sessions():
    model, batch = tiny_model(), sessions([5, 2, 7, 2, 1])
    order = torch.tensor([4, 2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(batch.select(order)), model(batch)[order])


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=8), data=st.data())
def test_given_step_logits_then_an_events_logit_reads_no_later_event_but_its_own_dwell(lengths, data):
    """Changing an event's item moves the step logits of it and the events after it in its
    session, and nothing else: each step logit is the LSTM's running state, the last one the
    session's score."""
    model, batch = tiny_model(), sessions(lengths, seed=3)
    changed = data.draw(st.integers(0, sum(lengths) - 1))
    other = replace(batch, item=batch.item.clone())
    other.item[changed] = other.item[changed] % (N_ITEMS - 2) + 2  # another real item
    with torch.no_grad():
        steps, other_steps = model.step_logits(batch), model.step_logits(other)
        torch.testing.assert_close(steps[batch.offsets[1:] - 1], model(batch), atol=1e-5, rtol=1e-5)
    session = int(torch.searchsorted(batch.offsets, changed, right=True)) - 1
    moved = torch.arange(changed, int(batch.offsets[session + 1]))
    kept = torch.ones(steps.numel(), dtype=torch.bool)
    kept[moved] = False
    assert torch.equal(steps[kept], other_steps[kept])
    assert not torch.isclose(steps[changed], other_steps[changed])


@pytest.mark.parametrize("head_linear", [True, False])
def test_given_every_hidden_unit_of_the_head_off_then_only_the_linear_part_tells_sessions_apart(head_linear):
    """Where the MLP's ReLU units are all off its output is one constant: without the linear part
    every session there gets the same score (the top sessions of models fitted on small windows)."""
    model = tiny_model(1, head_hidden=8, head_linear=head_linear)
    with torch.no_grad():
        model.head[0].bias.fill_(-1e6)
        logits = model(sessions([3, 1, 5, 2]))
    assert (logits.unique().numel() == 4) is head_linear


def test_given_an_empty_session_then_it_scores_from_a_zero_state_and_leaves_the_others_alone():
    model = tiny_model()
    batch = sessions([0, 3, 0, 2])
    with torch.no_grad():
        logits = model(batch)
        others = model(batch.select(torch.tensor([1, 3])))
    torch.testing.assert_close(logits[[1, 3]], others)
    zeros = torch.zeros(2, model.head[0].in_features)  # the head's inputs of an empty session
    expected = (model.head(zeros) + model.head_linear(zeros)).squeeze(-1)
    torch.testing.assert_close(logits[[0, 2]], expected)


def test_given_the_packed_layout_then_events_are_time_major_longest_session_first():
    layout = PackedLayout(torch.tensor([0, 2, 5, 6]))  # lengths 2, 3, 1
    assert layout.batch_sizes.tolist() == [3, 2, 1]
    # step 0: sessions by rank (1, 0, 2) -> events 2, 0, 5; step 1: 3, 1; step 2: 4
    assert layout.packed_rows.tolist() == [2, 0, 5, 3, 1, 4]
    assert layout.packed_position[layout.packed_rows].tolist() == list(range(6))


def test_given_training_mode_when_backpropagating_then_padding_rows_get_no_gradient():
    model = tiny_model().train()
    model(sessions([4, 1, 6])).sum().backward()
    assert model.item.weight.grad[0].abs().sum() == 0
    assert model.item.weight.grad.abs().sum() > 0


def test_given_a_pickled_and_reloaded_model_then_it_scores_identically():
    model, batch = tiny_model(), sessions([3, 1, 8])
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(reloaded(batch), model(batch))



@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=10))
def test_given_any_sessions_then_the_packed_path_equals_the_grouped_by_length_path(lengths):
    """forward runs sessions grouped by length on the CPU and packed elsewhere: both give the same
    final states, max over the steps and session sums (empty sessions included)."""
    model, batch = tiny_model(), sessions(lengths)
    with torch.no_grad():
        for grouped, packed in zip(model._summary_by_length(batch), model._summary_packed(batch), strict=True):
            torch.testing.assert_close(grouped, packed, atol=1e-5, rtol=1e-5)
