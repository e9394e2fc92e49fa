"""One rank's sessions for the fit loop: resident when its shard fits the rank's data budget,
streamed when not.

Resident: the shard is read once, made into tensors and kept on the training device; each epoch
cuts length-bucketed batches from all of it (models.batching). The fastest path, and the one
every window that fits takes.

Streamed: each epoch reads the shard's units in a seeded order, a buffer of about
`shuffle_buffer` sessions at a time (whole units), makes the buffer's tensors, moves them to the
device on the pinned, non-blocking path, and cuts the buffer's batches as the resident path cuts
all of its own. Memory holds one buffer, whatever the window's size.

Either way a session's tensors are the same (buy-rate inputs out of fold by the session's own
fold, features.buy_rates), so streaming changes which sessions share a batch, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from clickstream.features.tensors import SequenceTensors
from clickstream.models.batching import resident
from clickstream.models.predict import predict

if TYPE_CHECKING:
    from clickstream.models.lstm import BuyIntentLSTM

# What a resident shard costs per event and per session while it loads (the read frame and the
# flat tensors at once): the frame's list columns and the tensors' 41 bytes an event, with room
MEMORY_PER_EVENT = 96
MEMORY_PER_SESSION = 160
BUDGET_SHARE = 0.5  # of the GPU's memory, or of the host's per local rank, when no budget is set


@dataclass
class TrainingInput:
    """A rank's sessions, `n_sessions` of them with `n_events` events, as buffers of tensors."""

    n_sessions: int
    n_events: int
    is_streamed: bool
    _buffers: Callable[[int | None], Iterator[SequenceTensors]]
    _device: torch.device

    @classmethod
    def resident(cls, tensors: SequenceTensors, device: torch.device | str) -> TrainingInput:
        """All of `tensors`, copied to `device` once."""
        device = torch.device(device)
        on_device = resident(tensors, device)
        return cls(tensors.n_sessions, int(tensors.offsets[-1]), False, lambda _: iter((on_device,)), device)

    @classmethod
    def streamed(
        cls,
        n_sessions: int,
        n_events: int,
        buffers: Callable[[int | None], Iterator[SequenceTensors]],
        device: torch.device | str,
    ) -> TrainingInput:
        """Buffers made anew by `buffers(seed)` (CPU tensors; a seed shuffles their order, None keeps it)."""
        return cls(n_sessions, n_events, True, buffers, torch.device(device))

    def scores(self, model: BuyIntentLSTM) -> tuple[np.ndarray, np.ndarray]:
        """(raw scores, labels) of every session, buffer by buffer, in buffer order."""
        scores, labels = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
        for buffer in self.buffers(None):
            scores.append(predict(model, buffer, device=self._device))
            labels.append(buffer.label.cpu().numpy())
        return np.concatenate(scores), np.concatenate(labels)

    def buffers(self, seed: int | None = None) -> Iterator[SequenceTensors]:
        """The sessions as buffers on the device, each session in exactly one; the previous buffer is
        released before the next is made."""
        for buffer in self._buffers(seed):
            yield resident(buffer, self._device)


def data_budget(memory_mb: int | None, device: torch.device, local_ranks: int) -> int:
    """Bytes of data one rank may hold resident: `memory_mb` when set; else BUDGET_SHARE of the
    GPU's memory on CUDA, or of the host's (its cgroup limit where lower) divided among the
    machine's ranks on the CPU."""
    if memory_mb is not None:
        return memory_mb << 20
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * BUDGET_SHARE)
    return int(host_memory() * BUDGET_SHARE / max(local_ranks, 1))


def host_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit where lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as limit:
            text = limit.read().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def resident_bytes(sessions: int, events: int) -> int:
    """What holding `sessions` with `events` events resident costs while they load."""
    return sessions * MEMORY_PER_SESSION + events * MEMORY_PER_EVENT


def buffer_sessions(budget: int, sessions: int, events: int, shuffle_buffer: int) -> int:
    """Sessions per streamed buffer: `shuffle_buffer`, fewer where a buffer of it would not fit half the
    budget (the buffer being made and the one being trained on), at least one."""
    per_session = resident_bytes(sessions, events) / max(sessions, 1)
    return max(1, min(shuffle_buffer, int(budget / 2 / max(per_session, 1))))
