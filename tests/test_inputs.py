"""A rank's sessions, resident or streamed: the same sessions with the same tensors, whatever the
budget; the window's counts summed a unit at a time equal the counts of all sessions at once; a
fit on a streamed input learns."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch
from fixtures import labelled_lake, synthetic_sequences
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.features.vocabulary import WindowCounts, build_vocabulary
from clickstream.models.training.inputs import buffer_sessions, resident_bytes
from clickstream.models.training.job import count_window, rank_inputs
from clickstream.models.training.shards import read_units
from clickstream.models.training.window import prepare
from clickstream.pipeline.core.config import SequenceConfig
from clickstream.pipeline.core.lake import Lake

SESSIONS = synthetic_sequences(sessions=600, days=3, seed=5, n_items=80)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, SESSIONS.height), max_size=5), shuffle=st.booleans())
def test_property_counts_added_a_frame_at_a_time_give_the_vocabulary_of_all_sessions_at_once(
    cuts: list[int], shuffle: bool
) -> None:
    config = SequenceConfig(item_min_count=2)
    whole = build_vocabulary(SESSIONS, config)
    bounds = sorted({0, *cuts, SESSIONS.height})
    frames = [SESSIONS.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
    counts = WindowCounts()
    for frame in reversed(frames) if shuffle else frames:
        counts.add(frame)
    streamed = counts.vocabulary(config)
    assert streamed.version == whole.version
    for key, rates in whole.rates.items():
        assert all((a == b).all() for a, b in zip(rates.by_fold, streamed.rates[key].by_fold, strict=True))


def test_given_a_budget_too_small_for_the_shard_then_it_streams_the_same_sessions_and_tensors(
    tmp_path: Path,
) -> None:
    settings_ = labelled_lake(tmp_path, sessions=3000, days=5)
    config = replace(settings_.train, device="cpu")
    window = prepare(settings_, config, None, None)
    vocabulary = count_window(window, settings_.sequences)
    resident_train, resident_val = rank_inputs(window, vocabulary, config, device=torch.device("cpu"))
    streamed_train, streamed_val = rank_inputs(
        window, vocabulary, replace(config, memory_mb=0), device=torch.device("cpu")
    )
    assert not resident_train.is_streamed and streamed_train.is_streamed and streamed_val.is_streamed
    for resident, streamed in ((resident_train, streamed_train), (resident_val, streamed_val)):
        (whole,) = resident.buffers(None)
        buffers = list(streamed.buffers(None))  # units in order: the resident order
        assert len(buffers) == len(window.train.units if resident is resident_train else window.val.units)
        for name in ("item", "category", "event_type", "flags", "start_hour", "label"):
            assert torch.equal(torch.cat([getattr(b, name) for b in buffers]), getattr(whole, name)), name
        assert torch.equal(torch.cat([b.stored for b in buffers], dim=1), whole.stored)
        assert streamed.n_sessions == resident.n_sessions == whole.n_sessions
    shuffled = [b.n_sessions for b in streamed_train.buffers(7)]
    assert sorted(shuffled) == sorted(b.n_sessions for b in streamed_train.buffers(None))  # reordered, all there


def test_buffers_fit_half_the_budget_and_never_exceed_the_shuffle_buffer() -> None:
    per_session = resident_bytes(1000, 4000) / 1000
    assert buffer_sessions(int(per_session * 2000), 1000, 4000, 262_144) == 1000
    assert buffer_sessions(1 << 40, 1000, 4000, 5000) == 5000
    assert buffer_sessions(0, 1000, 4000, 5000) == 1


def test_given_the_lake_then_read_units_yields_only_labelled_sessions(tmp_path: Path) -> None:
    settings_ = labelled_lake(tmp_path, sessions=800, days=4)
    lake = Lake(settings_.lake)
    window = prepare(settings_, settings_.train, None, None)
    frames = list(read_units(lake, window.train.units))
    assert frames and all(frame.get_column("label").null_count() == 0 for frame in frames)
    assert pl.concat(frames).height == window.train.sessions
