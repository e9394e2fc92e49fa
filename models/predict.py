"""Batch inference: probabilities for many sessions, in their input order.

Where the CPU time goes (torch.profiler, default model, YOOCHOOSE-shaped lengths): the LSTM is
85% of it. A batch whose sessions all have ONE length is a dense [length, batch] block, which
torch runs on its fused oneDNN kernel; a ragged PackedSequence runs step by step with a separate
matmul, sigmoid and tanh per gate. So inference batches hold sessions of one length each, 4,096
at most (the per-step gate block then stays in cache), on one intra-op thread (the per-step
matmuls are too small to split: a second thread costs more CPU in synchronisation than it saves).
Together: 2.5x the sessions per CPU-second of ragged 16k batches on one thread; scores agree to
1e-7 (benchmarks/RESULTS.md, batch scoring).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from clickstream.models.batching import resident
from clickstream.models.calibration import UNCALIBRATED, Calibration
from clickstream.models.device import cpu_threads, float32_precision

if TYPE_CHECKING:
    import numpy as np

    from clickstream.features.tensors import SequenceTensors
    from clickstream.models.lstm import BuyIntentLSTM


BATCH_SIZE = 4096
CPU_THREADS = 1


@contextmanager
def _evaluating_on(model: BuyIntentLSTM, device: torch.device) -> Iterator[BuyIntentLSTM]:
    """The model in eval mode on `device` (on the CPU with CPU_THREADS intra-op threads), put back
    on its own device and mode, and torch's thread count restored, afterwards; IEEE float32 (no
    TF32), so a GPU scores what the CPU scores."""
    home = next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), float32_precision(tf32=False), cpu_threads(device, CPU_THREADS):
            yield model
    finally:
        model.to(home).train(was_training)


def equal_length_batches(
    tensors: SequenceTensors, batch_size: int
) -> Iterator[tuple[torch.Tensor, SequenceTensors]]:
    """(session indices, batch) pairs covering every session once: shortest sessions first, each
    batch at most `batch_size` sessions of one length, sessions in index order within it."""
    lengths = tensors.lengths.cpu()
    order = torch.argsort(lengths, stable=True)
    sizes = torch.bincount(lengths).tolist() if lengths.numel() else []
    device = tensors.offsets.device
    for group in order.split(sizes):
        for sessions in group.split(batch_size) if group.numel() else ():
            sessions = sessions.to(device)
            yield sessions, tensors.select(sessions)


def predict(
    model: BuyIntentLSTM,
    tensors: SequenceTensors,
    *,
    calibration: Calibration = UNCALIBRATED,
    batch_size: int = BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Purchase probability of every session through `calibration` (default: the raw sigmoid):
    float32 in [0, 1], in input session order. Deterministic (eval mode, no dropout); the model
    is left on its own device and mode."""
    device = torch.device(device)
    data = resident(tensors, device)
    scores = torch.empty(tensors.n_sessions, dtype=torch.float32, device=device)
    with _evaluating_on(model, device):
        for sessions, batch in equal_length_batches(data, batch_size):
            scores[sessions] = calibration.probability(model(batch).float())
    return scores.cpu().numpy()


def predict_steps(
    model: BuyIntentLSTM,
    tensors: SequenceTensors,
    *,
    calibration: Calibration = UNCALIBRATED,
    batch_size: int = BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Running purchase probability after each event through `calibration`: float32 in [0, 1], flat
    event order (row i matches event row i of `tensors`); a session's last value equals its
    `predict` score."""
    device = torch.device(device)
    data = resident(tensors, device)
    scores = torch.empty(data.item.numel(), dtype=torch.float32, device=device)
    with _evaluating_on(model, device):
        for sessions, batch in equal_length_batches(data, batch_size):
            _, rows = data.event_rows(sessions)
            scores[rows] = calibration.probability(model.step_logits(batch).float())
    return scores.cpu().numpy()
