"""Sessions as flat event tensors plus offsets: the layout GRU4Rec's official code
batches from. Session i's events are rows ``offsets[i]:offsets[i+1]`` of every
per-event tensor, in time order. No per-session Python object exists anywhere.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import polars as pl

    from features.buy_rates import LogitTable
    from features.vocabulary import Vocabulary

# Index 0 is padding in every categorical tensor (only the naive padded path uses it);
# index 1 is "out of vocabulary".
PAD = 0
OOV = 1

_THREADS = 2  # blocks filled at once: the 2-core machine this runs on

# The SEQUENCES columns load_tensors reads: a reader need not decode the others.
TENSOR_COLUMNS = (
    "session_id",
    "label",
    "start_hour",
    "start_weekday",
    "item_id",
    "category",
    "event_type",
    "log_gap_prev",
)


@dataclass
class SequenceTensors:
    """A batch of sessions, flat.

    offsets:    int64 [n_sessions + 1], offsets[0] == 0, non-decreasing
    item:       int64 [n_events]  vocabulary index (PAD/OOV reserved)
    category:   int64 [n_events]  vocabulary index (PAD/OOV reserved)
    event_type: int64 [n_events]  EVENT_TYPE_CODE + 1 (0 = PAD)
    continuous: float32 [n_events, n_continuous]  see features.sequences.CONTINUOUS_FEATURES
    label:      float32 [n_sessions]  1.0 buyer, 0.0 not, NaN unknown
    """

    offsets: torch.Tensor
    item: torch.Tensor
    category: torch.Tensor
    event_type: torch.Tensor
    continuous: torch.Tensor
    label: torch.Tensor

    @property
    def n_sessions(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SequenceTensors:
        return SequenceTensors(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def pin_memory(self) -> SequenceTensors:
        return SequenceTensors(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def event_rows(self, sessions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets of the selected sessions re-packed flat, the flat row of each of their events),
        sessions in the given order and each session's events in time order."""
        starts = self.offsets[:-1][sessions]
        lengths = self.lengths[sessions]
        offsets = torch.zeros(sessions.numel() + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # event index of every selected event: start of its session + position within it
        session_of_event = torch.repeat_interleave(torch.arange(sessions.numel(), device=starts.device), lengths)
        position = torch.arange(int(offsets[-1]), device=starts.device) - offsets[:-1][session_of_event]
        return offsets, starts[session_of_event] + position

    def select(self, sessions: torch.Tensor) -> SequenceTensors:
        """The given sessions (int64 indices, any order), re-packed flat in that order."""
        offsets, events = self.event_rows(sessions)
        return SequenceTensors(
            offsets=offsets,
            item=self.item[events],
            category=self.category[events],
            event_type=self.event_type[events],
            continuous=self.continuous[events],
            label=self.label[sessions],
        )


def load_tensors(sequences: pl.DataFrame, vocabulary: Vocabulary, *, out_of_fold: bool = False) -> SequenceTensors:
    """Flat CPU tensors of the sessions of a SEQUENCES frame, sessions in the frame's row order and
    each session's events in list order; items and categories through `vocabulary`.

    Reads only TENSOR_COLUMNS. No Python runs per session or event: list columns are taken as flat
    values, ids as integer codes (features.event_ids), a block of sessions at a time so that no
    temporary is as large as the frame. `continuous` holds features.sequences.CONTINUOUS_FEATURES;
    the dwell columns follow from the gaps (an event's dwell is the next input event's gap, unknown
    for the last). `label` is NaN where unknown. `out_of_fold` is for the training sessions the
    vocabulary was built from: their buy-rate inputs then leave out their own fold (features.buy_rates).
    """
    import polars as pl

    from features.buy_rates import RATE_KEYS, logit_table, session_folds
    from features.event_ids import BLOCK_EVENTS, known_ids, session_blocks
    from features.sequences import CONTINUOUS_FEATURES

    sequences = sequences.with_columns(pl.col(RATE_KEYS).cast(pl.List(pl.Categorical)))  # as read: a no-op
    known = known_ids()
    lengths = sequences.get_column("item_id").list.len().fill_null(0).cast(pl.Int64).to_numpy()
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_events = int(offsets[-1])
    with ThreadPoolExecutor(_THREADS) as pool:  # numpy, polars and torch release the GIL while they work
        own = _own_fold_counts(pool, sequences, offsets, known) if out_of_fold else dict.fromkeys(RATE_KEYS)
        loader = _BlockLoader(
            sequences=sequences,
            offsets=offsets,
            known=known,
            item_index=vocabulary.item_index(known),
            category_index=vocabulary.category_index(known),
            logits={key: logit_table(known, vocabulary.rates[key], own[key]) for key in RATE_KEYS},
            fold=session_folds(sequences) if out_of_fold else np.zeros(0, dtype=np.int8),
            start=sequences.select(pl.col("start_hour").cast(pl.Int64) * 8 + pl.col("start_weekday"))
            .to_series()
            .to_numpy(),
            log1p=torch.log1p(torch.arange(int(lengths.max(initial=0))).float()).numpy(),
            start_table=_start_table(),
        )
        tensors = SequenceTensors(
            offsets=torch.from_numpy(offsets),
            item=torch.empty(n_events, dtype=torch.int64),
            category=torch.empty(n_events, dtype=torch.int64),
            event_type=torch.empty(n_events, dtype=torch.int64),
            continuous=torch.empty(n_events, len(CONTINUOUS_FEATURES)),
            label=torch.from_numpy(
                sequences.get_column("label").cast(pl.Float32).fill_null(float("nan")).to_numpy(writable=True)
            ),
        )
        list(pool.map(lambda block: loader.fill(tensors, *block), session_blocks(offsets, BLOCK_EVENTS)))
    return tensors


def _own_fold_counts(
    pool: ThreadPoolExecutor, sequences: pl.DataFrame, offsets: np.ndarray, known: pl.Series
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """features.buy_rates.own_fold_counts for each of RATE_KEYS, each thread counting a share of the sessions."""
    from features.buy_rates import RATE_KEYS, own_fold_counts
    from features.event_ids import EventIds, session_blocks

    def counts(lo: int, hi: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        part = sequences.slice(lo, hi - lo)
        return {key: own_fold_counts(EventIds.of_lists(part.get_column(key), known), part) for key in RATE_KEYS}

    share_events = max(1, -(-int(offsets[-1]) // _THREADS))
    shares = list(pool.map(lambda share: counts(*share), session_blocks(offsets, share_events)))
    return {key: (sum(s[key][0] for s in shares), sum(s[key][1] for s in shares)) for key in RATE_KEYS}


@dataclass(frozen=True, eq=False)
class _BlockLoader:
    """What a block of sessions' tensors are computed from: the frame and per-code lookup tables."""

    sequences: pl.DataFrame
    offsets: np.ndarray  # int64 [n_sessions + 1]
    known: pl.Series  # features.event_ids.known_ids()
    item_index: np.ndarray  # int64 [n_codes]: vocabulary index of each code
    category_index: np.ndarray  # int64 [n_codes]
    logits: dict[str, LogitTable]  # by features.buy_rates.RATE_KEYS
    fold: np.ndarray  # int8 [n_sessions] out of fold, else empty
    start: np.ndarray  # int64 [n_sessions]: start_hour * 8 + start_weekday
    log1p: np.ndarray  # float32 [longest session]: log1p of each position
    start_table: np.ndarray  # float32 [4, 24 * 8], see _start_table

    def fill(self, tensors: SequenceTensors, lo: int, hi: int) -> None:
        """Write the events of sessions lo..hi-1 into the per-event tensors."""
        from features.event_ids import EventIds
        from features.sequences import CONTINUOUS_FEATURES

        part = self.sequences.slice(lo, hi - lo)
        first, end = self.offsets[lo], self.offsets[hi]

        def flat(name: str) -> pl.Series:
            return part.get_column(name).explode(empty_as_null=False, keep_nulls=False)

        lengths = np.diff(self.offsets[lo : hi + 1])
        items = EventIds.of(flat("item_id"), lengths, self.known)
        categories = EventIds.of(flat("category"), lengths, self.known)
        session = np.repeat(np.arange(hi - lo), lengths)
        starts = self.offsets[lo:hi][lengths > 0] - first  # each session's first event in the block
        ends = self.offsets[lo + 1 : hi + 1][lengths > 0] - first - 1  # and its last
        position = np.arange(end - first) - (self.offsets[lo:hi] - first)[session]
        # one feature per row: contiguous writes, then a single transposing copy into the tensor
        columns = np.empty((len(CONTINUOUS_FEATURES), end - first), dtype=np.float32)
        column = dict(zip(CONTINUOUS_FEATURES, columns, strict=True))
        gap = flat("log_gap_prev").to_numpy()
        column["log_gap_prev"][:] = gap
        column["log_dwell"][:-1] = gap[1:]  # the next event's gap ...
        column["log_dwell"][ends] = 0.0  # ... unknown for a session's last event
        column["dwell_known"][:] = 1.0
        column["dwell_known"][ends] = 0.0
        column["log_position"][:] = self.log1p[position]
        column["log_position_from_end"][:] = self.log1p[(lengths - 1)[session] - position]
        start = self.start[lo:hi][session]
        for name, values in zip(_START_FEATURES, self.start_table, strict=True):
            column[name][:] = values[start]
        column["item_repeat"][:] = ~items.first_sighting
        category = categories.code
        same = column["same_category_as_previous"]
        same[1:] = (category[1:] == category[:-1]) & (category[1:] != categories.missing)
        same[starts] = 0.0  # a session's first event has no previous one
        fold = self.fold[lo:hi]
        column["item_buy_logit"][:] = self.logits["item_id"].of_events(items, fold)
        column["category_buy_logit"][:] = self.logits["category"].of_events(categories, fold)
        tensors.continuous[first:end].copy_(torch.from_numpy(columns).T)
        tensors.item.numpy()[first:end] = self.item_index[items.code]
        tensors.category.numpy()[first:end] = self.category_index[categories.code]
        tensors.event_type.numpy()[first:end] = flat("event_type").to_numpy() + 1


_START_FEATURES = ("start_hour_sin", "start_hour_cos", "start_weekday_sin", "start_weekday_cos")


def _start_table() -> np.ndarray:
    """float32 [4, 24 * 8]: _START_FEATURES (one per row) of a session starting at hour h on
    weekday w (1 = Monday), in column h * 8 + w."""
    hour = torch.arange(24).float() * (2 * torch.pi / 24)
    weekday = (torch.arange(8).float() - 1) * (2 * torch.pi / 7)
    hours = torch.stack([hour.sin(), hour.cos()]).repeat_interleave(8, dim=1)
    weekdays = torch.stack([weekday.sin(), weekday.cos()]).repeat(1, 24)
    return torch.cat([hours, weekdays]).numpy()
