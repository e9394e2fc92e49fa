"""Sessions as flat event tensors plus offsets: the layout GRU4Rec's official code
batches from. Session i's events are rows ``offsets[i]:offsets[i+1]`` of every
per-event tensor, in time order. No per-session Python object exists anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import polars as pl

    from features.vocabulary import Vocabulary

# Index 0 is padding in every categorical tensor (only the naive padded path uses it);
# index 1 is "out of vocabulary".
PAD = 0
OOV = 1


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

    No Python runs per session or event: list columns are taken as flat values plus offsets.
    `continuous` holds features.sequences.CONTINUOUS_FEATURES; `label` is NaN where unknown.
    `out_of_fold` is for the training sessions the vocabulary was built from: their buy-rate
    inputs then leave out their own fold (features.buy_rates).
    """
    import polars as pl

    from features.buy_rates import buy_logits
    from features.sequences import CONTINUOUS_FEATURES

    def tensor(values: pl.Series) -> torch.Tensor:
        return torch.from_numpy(values.to_numpy(writable=True))

    lengths = tensor(sequences.get_column("item_id").list.len().cast(pl.Int64))
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])

    def flat(name: str) -> pl.Series:
        return sequences.get_column(name).explode(empty_as_null=False, keep_nulls=True)

    n_events = int(offsets[-1])
    continuous = torch.empty(n_events, len(CONTINUOUS_FEATURES), dtype=torch.float32)
    column = {name: continuous[:, i] for i, name in enumerate(CONTINUOUS_FEATURES)}
    for name in ("log_gap_prev", "log_dwell", "dwell_known"):  # straight from the Arrow values, one copy
        column[name].numpy()[:] = flat(name).to_numpy()
    position = torch.arange(n_events) - torch.repeat_interleave(offsets[:-1], lengths)
    torch.log1p(position.float(), out=column["log_position"])
    from_end = torch.repeat_interleave(lengths - 1, lengths) - position
    torch.log1p(from_end.float(), out=column["log_position_from_end"])
    # the session start on the unit circle, computed once per session and broadcast to its events
    hour = tensor(sequences.get_column("start_hour").cast(pl.Float32)) * (2 * torch.pi / 24)
    weekday = (tensor(sequences.get_column("start_weekday").cast(pl.Float32)) - 1) * (2 * torch.pi / 7)
    start = torch.stack([hour.sin(), hour.cos(), weekday.sin(), weekday.cos()], dim=1)
    first_start_column = CONTINUOUS_FEATURES.index("start_hour_sin")
    continuous[:, first_start_column : first_start_column + 4] = torch.repeat_interleave(start, lengths, dim=0)
    items, categories = flat("item_id"), flat("category")
    session_of_event = torch.repeat_interleave(torch.arange(lengths.numel()), lengths).numpy()
    first_sighting = pl.DataFrame({"session": session_of_event, "item": items}).select(
        pl.struct("session", "item").is_first_distinct()
    )
    column["item_repeat"].numpy()[:] = (~first_sighting.to_series()).to_numpy()
    same_category = (categories == categories.shift(1)).fill_null(False).to_numpy() & (position > 0).numpy()
    column["same_category_as_previous"].numpy()[:] = same_category
    for ids, key, name in ((items, "item_id", "item_buy_logit"), (categories, "category", "category_buy_logit")):
        rates = vocabulary.rates[key]
        column[name].numpy()[:] = buy_logits(ids, session_of_event, sequences, rates, out_of_fold=out_of_fold)
    return SequenceTensors(
        offsets=offsets,
        item=tensor(vocabulary.item_index(items)),
        category=tensor(vocabulary.category_index(categories)),
        event_type=tensor(flat("event_type").cast(pl.Int64)) + 1,
        continuous=continuous,
        label=tensor(sequences.get_column("label").cast(pl.Float32).fill_null(float("nan"))),
    )
