"""Length-bucketed batches from resident flat tensors."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.models.batching import bucket_chunks, iterate_batches, resident
from clickstream.pipeline.synthetic.tensors import sessions_with_lengths

lengths_lists = st.lists(st.integers(0, 30), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_lists, batch_size=st.integers(1, 16), seed=st.integers(0, 2**31), shuffle=st.booleans())
def test_given_an_epoch_then_every_session_is_in_exactly_one_batch(lengths, batch_size, seed, shuffle):
    tensors = sessions_with_lengths(np.array(lengths))
    generator = torch.Generator().manual_seed(seed)
    seen = [idx for idx, _ in iterate_batches(tensors, batch_size, shuffle=shuffle, generator=generator)]
    assert sorted(torch.cat(seen).tolist()) == list(range(len(lengths)))
    assert all(0 < idx.numel() <= batch_size for idx in seen)


@settings(max_examples=25, deadline=None)
@given(lengths=lengths_lists, batch_size=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_given_a_batch_then_it_holds_exactly_its_sessions_events_in_time_order(lengths, batch_size, seed):
    tensors = sessions_with_lengths(np.array(lengths), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for idx, batch in iterate_batches(tensors, batch_size, shuffle=True, generator=generator):
        assert torch.equal(batch.lengths, tensors.lengths[idx])
        assert torch.equal(batch.label, tensors.label[idx])
        expected = torch.cat([tensors.item[tensors.offsets[i] : tensors.offsets[i + 1]] for i in idx.tolist()])
        assert torch.equal(batch.item, expected)


def test_given_shuffled_batches_then_each_holds_a_contiguous_range_of_session_lengths():
    tensors = sessions_with_lengths(np.random.default_rng(0).integers(1, 50, 500))
    chunks = bucket_chunks(tensors.lengths, 32, shuffle=True, generator=torch.Generator().manual_seed(1))
    spans = sorted((int(tensors.lengths[c].min()), int(tensors.lengths[c].max())) for c in chunks)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in pairwise(spans))
    assert spans[-1][1] - spans[0][0] > 40  # and the batches differ in length


def test_given_the_same_seed_then_the_same_batches_and_another_seed_another_order():
    lengths = np.random.default_rng(0).integers(1, 10, 300)
    tensors = sessions_with_lengths(lengths)

    def epoch(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return [idx.tolist() for idx, _ in iterate_batches(tensors, 16, shuffle=True, generator=generator)]

    assert epoch(5) == epoch(5)
    assert epoch(5) != epoch(6)


def test_given_no_shuffle_then_batches_come_shortest_first_in_stable_order():
    tensors = sessions_with_lengths(np.array([3, 1, 2, 1, 3]))
    batches = [idx.tolist() for idx, _ in iterate_batches(tensors, 2, shuffle=False, generator=None)]
    assert batches == [[1, 3], [2, 0], [4]]


@settings(max_examples=30, deadline=None)
@given(n_sessions=st.integers(1, 80), batch_size=st.integers(1, 16), world_size=st.integers(2, 4))
def test_given_ranks_then_each_gets_as_many_batches_and_together_they_cover_every_session(
    n_sessions, batch_size, world_size
):
    lengths = torch.arange(n_sessions) % 7 + 1
    shards = [
        bucket_chunks(
            lengths, batch_size, shuffle=True, generator=torch.Generator().manual_seed(3),
            rank=rank, world_size=world_size,
        )
        for rank in range(world_size)
    ]
    assert len({len(shard) for shard in shards}) == 1
    covered = torch.cat([chunk for shard in shards for chunk in shard]).unique()
    assert covered.tolist() == list(range(n_sessions))


def test_given_tensors_already_on_the_device_then_resident_returns_them_without_copying():
    tensors = sessions_with_lengths(np.array([2, 3]))
    assert resident(tensors, torch.device("cpu")) is tensors
