"""Batch inference: probabilities for many sessions, in their input order."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from clickstream.models.batching import iterate_batches, resident
from clickstream.models.device import float32_precision

if TYPE_CHECKING:
    import numpy as np

    from clickstream.features.tensors import SequenceTensors
    from clickstream.models.lstm import BuyIntentLSTM


@contextmanager
def _evaluating_on(model: BuyIntentLSTM, device: torch.device) -> Iterator[BuyIntentLSTM]:
    """The model in eval mode on `device`, put back on its own device and mode afterwards; IEEE
    float32 (no TF32), so a GPU scores what the CPU scores."""
    home = next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), float32_precision(tf32=False):
            yield model
    finally:
        model.to(home).train(was_training)


def predict(
    model: BuyIntentLSTM,
    tensors: SequenceTensors,
    *,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Purchase probability of every session: float32 in [0, 1], in input session order.
    Deterministic (eval mode, no dropout); the model is left on its own device and mode."""
    device = torch.device(device)
    data = resident(tensors, device)
    scores = torch.empty(tensors.n_sessions, dtype=torch.float32, device=device)
    with _evaluating_on(model, device):
        for sessions, batch in iterate_batches(data, batch_size, shuffle=False, generator=None):
            scores[sessions] = torch.sigmoid(model(batch).float())
    return scores.cpu().numpy()


def predict_steps(
    model: BuyIntentLSTM,
    tensors: SequenceTensors,
    *,
    batch_size: int = 16384,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Running purchase probability after each event: float32 in [0, 1], flat event order
    (row i matches event row i of `tensors`); a session's last value equals its `predict` score."""
    device = torch.device(device)
    data = resident(tensors, device)
    scores = torch.empty(data.item.numel(), dtype=torch.float32, device=device)
    with _evaluating_on(model, device):
        for sessions, batch in iterate_batches(data, batch_size, shuffle=False, generator=None):
            _, rows = data.event_rows(sessions)
            scores[rows] = torch.sigmoid(model.step_logits(batch).float())
    return scores.cpu().numpy()
