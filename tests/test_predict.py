"""Batch inference returns probabilities in the caller's order, whatever the bucketing."""

from __future__ import annotations

import numpy as np
import torch

from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict, predict_steps
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
