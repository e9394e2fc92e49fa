"""YOOCHOOSE-shaped SequenceTensors straight from numpy, for tests and the throughput benchmarks:
lengths like the real data (mean 3.6 events, capped at 200), Zipf items and a planted label."""

from __future__ import annotations

import numpy as np
import torch

from clickstream.features.tensors import CONTINUOUS_FEATURES, FLAG_FEATURES, STORED_FEATURES, SequenceTensors

N_ITEMS = 52_000  # YOOCHOOSE's catalogue size, order of magnitude
N_CATEGORIES = 340
N_EVENT_TYPES = 6  # PAD + EVENT_TYPES
N_CONTINUOUS = len(CONTINUOUS_FEATURES)
MAX_LENGTH = 200


def synthetic_tensors(
    n_sessions: int, *, seed: int = 0, n_items: int = N_ITEMS, mean_length: float = 3.6
) -> SequenceTensors:
    """YOOCHOOSE-shaped sessions: lengths mix two geometric distributions (90% short, 10%
    long-tailed) with the requested mean, capped at 200; events as in `sessions_with_lengths`."""
    rng = np.random.default_rng(seed)
    short = rng.geometric(1 / (mean_length * 0.83), n_sessions)
    long = rng.geometric(1 / (mean_length * 2.5), n_sessions)
    lengths = np.minimum(np.where(rng.random(n_sessions) < 0.9, short, long), MAX_LENGTH)
    return sessions_with_lengths(lengths, seed=seed + 1, n_items=n_items)


def sessions_with_lengths(lengths: np.ndarray, *, seed: int = 0, n_items: int = N_ITEMS) -> SequenceTensors:
    """Sessions of the given lengths (0 allowed) with a planted, learnable, order-dependent label.

    Items are Zipf-distributed over `n_items`; a quarter of them are "hot" (index divisible
    by 4) and a session is likelier to buy when its last event is hot and when it is longer.
    Same lengths and seed, same tensors.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_sessions = lengths.size
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_events = int(offsets[-1])
    item = np.minimum(rng.zipf(1.3, n_events), n_items - 2) + 1  # 0 is PAD; 1 (OOV) is rare
    category = (item * 7919) % (N_CATEGORIES - 2) + 2
    event_type = np.full(n_events, 1, dtype=np.int32) + (rng.random(n_events) < 0.05)
    stored = rng.normal(0.0, 1.0, (len(STORED_FEATURES), n_events)).astype(np.float32)
    flags = rng.integers(0, 1 << len(FLAG_FEATURES), n_events, dtype=np.uint8)
    start_hour = rng.integers(0, 24, n_sessions, dtype=np.int32)
    last_item = np.append(item, 1)[np.where(lengths > 0, offsets[1:] - 1, n_events)]  # 1: empty session
    logit = -4.0 + 5.0 * (last_item % 4 == 0) + 0.2 * np.minimum(lengths, 10)
    label = (rng.random(n_sessions) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return SequenceTensors(
        offsets=torch.from_numpy(offsets),
        item=torch.from_numpy(item.astype(np.int32)),
        category=torch.from_numpy(category.astype(np.int32)),
        event_type=torch.from_numpy(event_type),
        stored=torch.from_numpy(stored),
        flags=torch.from_numpy(flags),
        start_hour=torch.from_numpy(start_hour),
        label=torch.from_numpy(label),
    )
