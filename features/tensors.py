"""Sessions as flat event tensors plus offsets: the layout GRU4Rec's official code
batches from. Session i's events are rows ``offsets[i]:offsets[i+1]`` of every
per-event tensor, in time order. No per-session Python object exists anywhere.

Only what cannot be recomputed cheaply is held per event (indices as int32, the
STORED_FEATURES as float32, the FLAG_FEATURES as bits of one byte); the other model inputs
follow per batch from the offsets, the gaps and each session's start
(`SequenceTensors.continuous`). That keeps the resident set about a quarter the size of a full
[n_events, 14] float matrix, which is what loading time goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from clickstream.features.buy_rates import RATE_KEYS, logit_table, session_folds
from clickstream.features.event_ids import BLOCK_EVENTS, EventIds, known_ids, session_blocks
from clickstream.pipeline.core.schemas import EVENT_TYPES

if TYPE_CHECKING:

    from clickstream.features.buy_rates import LogitTable
    from clickstream.features.vocabulary import Vocabulary

# The model's continuous inputs per event, in order (SequenceTensors.continuous).
CONTINUOUS_FEATURES: tuple[str, ...] = (
    "log_gap_prev",  # log1p(seconds since the previous input event), 0 for the first
    "log_dwell",  # log1p(seconds to the next input event), 0 for the last
    "dwell_known",  # 1.0 where log_dwell is known, 0.0 for the last event
    "log_position",  # log1p(events before this one in the input sequence)
    "log_position_from_end",  # log1p(events after this one)
    "start_hour_sin",  # hour of the session start (UTC) on the unit circle
    "start_hour_cos",
    "start_weekday_sin",  # weekday of the session start on the unit circle
    "start_weekday_cos",
    "item_repeat",  # 1.0 where the item was already seen earlier in the session (a revisit)
    "same_item_as_previous",  # 1.0 where the item equals the previous event's (a reload, another picture)
    "same_category_as_previous",  # 1.0 where the category equals the previous event's
    "item_buy_logit",  # smoothed buy log-odds of the item in the training window (features.buy_rates)
    "category_buy_logit",  # the same for the event's category
)

# Those of CONTINUOUS_FEATURES that need the ids or the buy-rate tables, computed once by
# load_tensors: the rows of SequenceTensors.stored, and the bits (bit i: FLAG_FEATURES[i]) of
# SequenceTensors.flags.
STORED_FEATURES: tuple[str, ...] = ("log_gap_prev", "item_buy_logit", "category_buy_logit")
FLAG_FEATURES: tuple[str, ...] = ("item_repeat", "same_item_as_previous", "same_category_as_previous")

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


def feature_schema() -> str:
    """A short hash of the model's input spec (the sequence columns read, the event types and the
    continuous features in order): versions with the same hash take the same inputs, so one can
    stand in for another. Registered as each model version's `feature_schema` tag."""
    spec = {"columns": TENSOR_COLUMNS, "event_types": EVENT_TYPES, "continuous": CONTINUOUS_FEATURES}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def session_positions(offsets: torch.Tensor, n_events: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(session of each event, its position within the session), both int64 [n_events], on the
    device of `offsets`; `n_events` is offsets[-1], passed so that no device sync is needed."""
    lengths = offsets[1:] - offsets[:-1]
    session = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=n_events
    )
    return session, torch.arange(n_events, device=offsets.device) - offsets[:-1][session]


@dataclass
class SequenceTensors:
    """A batch of sessions, flat.

    offsets:    int64 [n_sessions + 1], offsets[0] == 0, non-decreasing
    item:       int32 [n_events]  vocabulary index (PAD/OOV reserved)
    category:   int32 [n_events]  vocabulary index (PAD/OOV reserved)
    event_type: int32 [n_events]  EVENT_TYPE_CODE + 1 (0 = PAD)
    stored:     float32 [len(STORED_FEATURES), n_events]  one feature per row
    flags:      uint8 [n_events]  bit i set where FLAG_FEATURES[i] holds
    start:      int32 [n_sessions]  start_hour * 8 + start_weekday (1 = Monday)
    label:      float32 [n_sessions]  1.0 buyer, 0.0 not, NaN unknown
    """

    offsets: torch.Tensor
    item: torch.Tensor
    category: torch.Tensor
    event_type: torch.Tensor
    stored: torch.Tensor
    flags: torch.Tensor
    start: torch.Tensor
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

    def continuous(self, session: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """float32 [n_events, len(CONTINUOUS_FEATURES)] in flat event order, given each event's
        session and position (`session_positions`): the stored features plus those that follow
        from them. An event's dwell is the next event's gap, unknown (0, dwell_known 0) for a
        session's last; the session start goes on the unit circle by hour and weekday."""
        after = self.lengths[session] - 1 - position  # events after this one
        last = after == 0
        gap = self.stored[STORED_FEATURES.index("log_gap_prev")]
        start = self.start[session]
        hour = (start // 8).float() * (2 * math.pi / 24)
        weekday = (start % 8 - 1).float() * (2 * math.pi / 7)
        column = dict(zip(STORED_FEATURES, self.stored.unbind(0), strict=True))
        column.update({name: ((self.flags >> bit) & 1).float() for bit, name in enumerate(FLAG_FEATURES)})
        column.update(
            log_dwell=gap.roll(-1).masked_fill(last, 0.0),  # the flat last event is a session's last
            dwell_known=(~last).float(),
            log_position=torch.log1p(position.float()),
            log_position_from_end=torch.log1p(after.float()),
            start_hour_sin=hour.sin(),
            start_hour_cos=hour.cos(),
            start_weekday_sin=weekday.sin(),
            start_weekday_cos=weekday.cos(),
        )
        return torch.stack([column[name] for name in CONTINUOUS_FEATURES], dim=1)

    def event_rows(self, sessions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets of the selected sessions re-packed flat, the flat row of each of their events),
        sessions in the given order and each session's events in time order."""
        lengths = self.lengths[sessions]
        offsets = torch.zeros(sessions.numel() + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        session, position = session_positions(offsets, int(offsets[-1]))
        return offsets, self.offsets[:-1][sessions][session] + position

    def select(self, sessions: torch.Tensor) -> SequenceTensors:
        """The given sessions (int64 indices, any order), re-packed flat in that order."""
        offsets, events = self.event_rows(sessions)
        return SequenceTensors(
            offsets=offsets,
            item=self.item[events],
            category=self.category[events],
            event_type=self.event_type[events],
            stored=self.stored[:, events],
            flags=self.flags[events],
            start=self.start[sessions],
            label=self.label[sessions],
        )


def load_tensors(sequences: pl.DataFrame, vocabulary: Vocabulary, *, out_of_fold: bool = False) -> SequenceTensors:
    """Flat CPU tensors of the sessions of a SEQUENCES frame, sessions in the frame's row order and
    each session's events in list order; items and categories through `vocabulary`.

    Reads only TENSOR_COLUMNS. No Python runs per session or event: list columns are taken as flat
    values, ids as integer codes (features.event_ids), a block of sessions at a time so that no
    temporary is as large as the frame. `label` is NaN where unknown. `out_of_fold` is for the
    training sessions the vocabulary was built from (in this process: the counts per fold are not
    saved): their buy-rate inputs then leave out their own fold (features.buy_rates).
    """
    sequences = sequences.with_columns(pl.col(RATE_KEYS).cast(pl.List(pl.Categorical)))  # as read: a no-op
    known = known_ids()
    lengths = sequences.get_column("item_id").list.len().fill_null(0).cast(pl.Int64).to_numpy()
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_events = int(offsets[-1])
    loader = _BlockLoader(
        sequences=sequences,
        offsets=offsets,
        known=known,
        item_index=vocabulary.item_index(known).astype(np.int32),
        category_index=vocabulary.category_index(known).astype(np.int32),
        logits={key: logit_table(known, vocabulary.rates[key], out_of_fold=out_of_fold) for key in RATE_KEYS},
        fold=session_folds(sequences) if out_of_fold else None,
    )
    start = sequences.select(pl.col("start_hour").cast(pl.Int32) * 8 + pl.col("start_weekday"))
    tensors = SequenceTensors(
        offsets=torch.from_numpy(offsets),
        item=torch.empty(n_events, dtype=torch.int32),
        category=torch.empty(n_events, dtype=torch.int32),
        event_type=torch.empty(n_events, dtype=torch.int32),
        stored=torch.empty(len(STORED_FEATURES), n_events),
        flags=torch.empty(n_events, dtype=torch.uint8),
        start=torch.from_numpy(start.to_series().to_numpy(writable=True)),
        label=torch.from_numpy(
            sequences.get_column("label").cast(pl.Float32).fill_null(float("nan")).to_numpy(writable=True)
        ),
    )
    with ThreadPoolExecutor(_THREADS) as pool:  # numpy, polars and torch release the GIL while they work
        list(pool.map(lambda block: loader.fill(tensors, *block), session_blocks(offsets, BLOCK_EVENTS)))
    return tensors


@dataclass(frozen=True, eq=False)
class _BlockLoader:
    """What a block of sessions' tensors are computed from: the frame and per-code lookup tables."""

    sequences: pl.DataFrame
    offsets: np.ndarray  # int64 [n_sessions + 1]
    known: pl.Series  # features.event_ids.known_ids()
    item_index: np.ndarray  # int32 [n_codes]: vocabulary index of each code
    category_index: np.ndarray  # int32 [n_codes]
    logits: dict[str, LogitTable]  # by features.buy_rates.RATE_KEYS
    fold: np.ndarray | None  # int8 [n_sessions] out of fold (features.buy_rates.session_folds), else None

    def fill(self, tensors: SequenceTensors, lo: int, hi: int) -> None:
        """Write the events of sessions lo..hi-1 into the per-event tensors."""
        part = self.sequences.slice(lo, hi - lo)
        first, end = self.offsets[lo], self.offsets[hi]

        def flat(name: str) -> pl.Series:
            return part.get_column(name).explode(empty_as_null=False, keep_nulls=False)

        lengths = np.diff(self.offsets[lo : hi + 1])
        ids = {key: EventIds.of(flat(key), lengths, self.known) for key in RATE_KEYS}
        items, categories = ids["item_id"], ids["category"]
        stored = dict(zip(STORED_FEATURES, tensors.stored.numpy()[:, first:end], strict=True))
        stored["log_gap_prev"][:] = flat("log_gap_prev").to_numpy()
        fold = None if self.fold is None else self.fold[lo:hi]
        for key, name in _LOGIT_FEATURES.items():
            stored[name][:] = self.logits[key].of_events(ids[key], fold)
        session_start = self.offsets[lo:hi][lengths > 0] - first
        flags = {
            "item_repeat": ~items.first_sighting,
            "same_item_as_previous": items.same_as_previous(session_start),
            "same_category_as_previous": categories.same_as_previous(session_start),
        }
        packed = tensors.flags.numpy()[first:end]
        packed[:] = 0
        for bit, name in enumerate(FLAG_FEATURES):
            packed |= flags[name].view(np.uint8) << bit
        tensors.item.numpy()[first:end] = self.item_index[items.code]
        tensors.category.numpy()[first:end] = self.category_index[categories.code]
        tensors.event_type.numpy()[first:end] = flat("event_type").to_numpy() + 1


_LOGIT_FEATURES = {"item_id": "item_buy_logit", "category": "category_buy_logit"}  # by RATE_KEYS
