"""A pinned `sequences` snapshot cut into shard units, spread over the ranks, read a unit at a time.

A unit is one Parquet row group of one data file of the table version a training run pinned
(the lake writes `sequences` in row groups of SHARD_ROWS sessions, so a day of a big shop is
many units). Units never change once written (a Delta data file is immutable and a rewrite
adds new files), so the list made from one version names the same sessions for every rank on
every machine, for as long as the version is not vacuumed.

Every unit goes to exactly one rank (`assign`): each rank reads only its own, so no rank ever
holds the window, and every labelled session is read once per epoch across all ranks.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow.parquet as pq

from clickstream.pipeline.core.lake import Lake, partition_values
from clickstream.pipeline.core.schemas import SEQUENCES, conform


@dataclass(frozen=True, order=True)
class Unit:
    """Rows offset..offset+rows-1 (one row group) of one data file of `day`."""

    day: dt.date
    path: str
    offset: int
    rows: int


def shard_units(lake: Lake, files: Iterable[str]) -> list[Unit]:
    """The row groups of `files` (lake.files order), in that order."""
    units = []
    for path in files:
        with lake.fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        day, _ = partition_values(path)
        offset = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if rows:
                units.append(Unit(day, path, offset, rows))
            offset += rows
    return units


def assign(weights: Sequence[int], world: int) -> list[list[int]]:
    """The indices of the items of each of `world` ranks, given each item's weight (its sessions):
    each item to exactly one rank, the weights as even as whole items allow (heaviest first to the
    lightest rank, ties to the lower rank), each rank's indices ascending. The same weights give
    the same assignment on every machine."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        loads[rank] += weights[index]
        shares[rank].append(index)
    return [sorted(share) for share in shares]


def read_unit(lake: Lake, unit: Unit, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """The labelled sessions of `unit`, with the SEQUENCES columns (or those named), typed as SEQUENCES."""
    names = SEQUENCES.names() if columns is None else [n for n in SEQUENCES.names() if n in set(columns)]
    scan = pl.scan_parquet(
        unit.path, glob=False, hive_partitioning=False, storage_options=lake.storage_options
    ).slice(unit.offset, unit.rows)
    frame = scan.filter(pl.col("label").is_not_null()).select(names).collect()
    return conform(frame, pl.Schema({name: SEQUENCES[name] for name in names}))


def read_units(
    lake: Lake, units: Iterable[Unit], columns: Iterable[str] | None = None, *, seed: int | None = None
) -> Iterator[pl.DataFrame]:
    """`read_unit` of each unit, one at a time: in the given order, or shuffled by `seed`."""
    ordered = list(units)
    if seed is not None:
        random.Random(seed).shuffle(ordered)
    for unit in ordered:
        yield read_unit(lake, unit, columns)


def gather_sessions(frames: Iterable[pl.DataFrame], sessions: int) -> Iterator[pl.DataFrame]:
    """`frames` regrouped into frames of at least `sessions` rows (the last may hold fewer): whole
    frames are joined, never split, so a buffer is at most `sessions` plus one unit."""
    held: list[pl.DataFrame] = []
    count = 0
    for frame in frames:
        held.append(frame)
        count += frame.height
        if count >= sessions:
            yield pl.concat(held, rechunk=False)
            held, count = [], 0
    if count:
        yield pl.concat(held, rechunk=False)
