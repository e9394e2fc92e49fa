"""Batch inference returns probabilities in the caller's order, whatever the bucketing."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import equal_length_batches, predict, predict_steps
from clickstream.pipeline.core.config import ModelConfig
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, sessions_with_lengths

N_ITEMS = 40


def tiny_model() -> BuyIntentLSTM:
    torch.manual_seed(0)
    config = ModelConfig(item_dim=6, category_dim=3, event_type_dim=2, hidden_size=8)
    return BuyIntentLSTM(config, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


def test_given_sessions_of_mixed_lengths_then_scores_come_back_in_input_order():
    tensors = sessions_with_lengths(np.random.default_rng(0).integers(0, 15, 200), n_items=N_ITEMS)
    model = tiny_model().eval()
    scores = predict(model, tensors, batch_size=16)
    with torch.no_grad():
        expected = torch.sigmoid(model(tensors)).numpy()
    assert scores.dtype == np.float32 and scores.shape == (200,)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_given_a_training_model_then_predict_is_deterministic_and_leaves_its_mode_alone():
    tensors = sessions_with_lengths(np.array([4, 2, 9]), n_items=N_ITEMS)
    model = tiny_model().train()
    first = predict(model, tensors)
    assert np.array_equal(first, predict(model, tensors))
    assert model.training


def test_given_step_scores_then_each_sessions_last_step_equals_its_score():
    lengths = np.random.default_rng(1).integers(1, 12, 50)
    tensors = sessions_with_lengths(lengths, n_items=N_ITEMS)
    model = tiny_model()
    steps = predict_steps(model, tensors, batch_size=8)
    assert steps.shape == (tensors.item.numel(),) and steps.dtype == np.float32
    last = tensors.offsets[1:].numpy() - 1
    np.testing.assert_allclose(steps[last], predict(model, tensors, batch_size=8), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(
            steps, torch.sigmoid(model.eval().step_logits(tensors)).numpy(), atol=1e-6
        )


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=0, max_size=60), batch_size=st.integers(1, 9))
def test_given_any_lengths_then_inference_batches_hold_one_length_each_and_cover_every_session_once(
    lengths, batch_size
):
    tensors = sessions_with_lengths(np.array(lengths, dtype=np.int64), n_items=N_ITEMS)
    batches = list(equal_length_batches(tensors, batch_size))
    seen = sorted(i for sessions, _ in batches for i in sessions.tolist())
    assert seen == list(range(len(lengths)))
    for sessions, batch in batches:
        assert 1 <= sessions.numel() <= batch_size
        assert len(set(batch.lengths.tolist())) == 1
        assert batch.lengths.tolist() == [lengths[i] for i in sessions.tolist()]


def test_given_one_thread_inference_then_torch_threads_are_restored_and_scores_match_the_ragged_forward():
    tensors = sessions_with_lengths(np.random.default_rng(2).integers(0, 20, 300), n_items=N_ITEMS)
    model = tiny_model().eval()
    threads = torch.get_num_threads()
    scores = predict(model, tensors, batch_size=7)  # one ragged forward below vs many equal-length ones
    assert torch.get_num_threads() == threads
    with torch.no_grad():
        np.testing.assert_allclose(scores, torch.sigmoid(model(tensors)).numpy(), atol=1e-6)
    assert predict(model, sessions_with_lengths(np.array([], dtype=np.int64), n_items=N_ITEMS)).shape == (0,)
