"""Length-bucketed batches straight from resident flat tensors: no Dataset, no collate.

Sessions are sorted by length (ties in random order when shuffling), cut into chunks of
`batch_size`, and the chunk order is shuffled with a seeded generator. Every batch then
holds sessions of similar length, so the LSTM runs few time steps per batch, and the
gather that builds it runs on whatever device the tensors already live on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:

    from clickstream.features.tensors import SequenceTensors


def resident(tensors: SequenceTensors, device: torch.device) -> SequenceTensors:
    """`tensors` on `device`, copied once (pinned and asynchronous on CUDA); as-is when already there."""
    if tensors.offsets.device == device:
        return tensors
    if device.type == "cuda":
        return tensors.pin_memory().to(device, non_blocking=True)
    return tensors.to(device)


def bucket_chunks(
    lengths: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    rank: int = 0,
    world_size: int = 1,
) -> list[torch.Tensor]:
    """Session indices (CPU int64) of this rank's batches for one epoch.

    Without sharding every session appears in exactly one chunk. Unshuffled, chunks come
    in ascending length order and sessions within a chunk by ascending length, then index.
    With `world_size` > 1 the chunk list is padded by wrapping around to a multiple of
    `world_size` and rank r takes chunks r, r + world_size, ...: every rank gets the same
    number of batches (DDP needs that) and every session is seen at least once per epoch.
    """
    lengths = lengths.cpu()
    if shuffle:
        perm = torch.randperm(lengths.numel(), generator=generator)
        order = perm[torch.argsort(lengths[perm], stable=True)]
    else:
        order = torch.argsort(lengths, stable=True)
    chunks = list(order.split(batch_size))
    if shuffle:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    if world_size > 1:
        per_rank = -(-len(chunks) // world_size)
        chunks = [chunks[i % len(chunks)] for i in range(rank, per_rank * world_size, world_size)]
    return chunks


def iterate_batches(
    tensors: SequenceTensors,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, SequenceTensors]]:
    """(session indices, batch) pairs covering every session of `tensors` exactly once
    (at least once per rank-shard when `world_size` > 1, see `bucket_chunks`).

    Indices and batches live on the device of `tensors`; the batch holds those sessions
    re-packed flat in index order. The same generator state gives the same batches.
    """
    device = tensors.offsets.device
    chunks = bucket_chunks(
        tensors.lengths, batch_size, shuffle=shuffle, generator=generator, rank=rank, world_size=world_size
    )
    if device.type == "cuda" and chunks:
        # one pinned, asynchronous copy of the epoch's order instead of one per batch
        sizes = [chunk.numel() for chunk in chunks]
        chunks = list(torch.cat(chunks).pin_memory().to(device, non_blocking=True).split(sizes))
    for sessions in chunks:
        yield sessions, tensors.select(sessions)
