"""Sessions as flat event tensors plus offsets: the layout GRU4Rec's official code
batches from. Session i's events are rows ``offsets[i]:offsets[i+1]`` of every
per-event tensor, in time order. No per-session Python object exists anywhere.

Only what cannot be recomputed cheaply is held per event (indices as int32, the
STORED_FEATURES as float32, the FLAG_FEATURES as bits of one byte); the other model inputs
follow per batch from the offsets, the gaps and each session's start
(`SequenceTensors.continuous`). That keeps the resident set about a third the size of a full
[n_events, 14] float matrix, which is what loading time goes on.

This module needs only torch: training and scoring on a GPU worker import it without the
frame libraries. Building tensors from a SEQUENCES frame is features.tensor_loader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

# Index 0 is padding in every categorical tensor (item, category, event type); only the naive
# padded path and the embeddings' padding_idx use it.
PAD = 0

# The model's continuous inputs per event, in order (SequenceTensors.continuous).
CONTINUOUS_FEATURES: tuple[str, ...] = (
    "log_gap_prev",  # log1p(seconds since the previous input event), 0 for the first
    "log_dwell",  # log1p(seconds to the next input event), 0 for the last
    "dwell_known",  # 1.0 where log_dwell is known, 0.0 for the last event
    "log_position",  # log1p(events before this one in the input sequence)
    "log_position_from_end",  # log1p(events after this one)
    "start_hour_sin",  # hour of the session start (UTC) on the unit circle
    "start_hour_cos",
    "item_repeat",  # 1.0 where the item was already seen earlier in the session (a revisit)
    "same_item_as_previous",  # 1.0 where the item equals the previous event's (a reload, another picture)
    "same_category_as_previous",  # 1.0 where the category equals the previous event's
    "item_buy_logit",  # smoothed buy log-odds of the item in the training window (features.buy_rates)
    "category_buy_logit",  # the same for the event's category
    "item_evidence",  # log1p(labelled training sessions behind item_buy_logit); 0 for an unseen item
    "category_evidence",  # the same for category_buy_logit
    "item_end_buy_logit",  # smoothed buy log-odds of the training sessions that end on the item
    "item_end_evidence",  # log1p(labelled training sessions that end on the item)
    # Later inputs go last: a model keeps the ones it was trained on, a prefix of these (models.bundle)
    "category_repeat",  # 1.0 where the event's category occurred earlier in the session (none never does)
)

# Those of CONTINUOUS_FEATURES that need the ids or the buy-rate tables, computed once by
# features.tensor_loader.load_tensors: the rows of SequenceTensors.stored, and the bits (bit i: FLAG_FEATURES[i]) of
# SequenceTensors.flags.
STORED_FEATURES: tuple[str, ...] = (
    "log_gap_prev",
    "item_buy_logit",
    "category_buy_logit",
    "item_evidence",
    "category_evidence",
    "item_end_buy_logit",
    "item_end_evidence",
)
FLAG_FEATURES: tuple[str, ...] = (
    "item_repeat",
    "same_item_as_previous",
    "same_category_as_previous",
    "category_repeat",
)


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
    start_hour: int32 [n_sessions]  hour of the session start (UTC, 0-23)
    label:      float32 [n_sessions]  1.0 buyer, 0.0 not, NaN unknown
    """

    offsets: torch.Tensor
    item: torch.Tensor
    category: torch.Tensor
    event_type: torch.Tensor
    stored: torch.Tensor
    flags: torch.Tensor
    start_hour: torch.Tensor
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
        session's last; the session start's hour goes on the unit circle."""
        after = self.lengths[session] - 1 - position  # events after this one
        last = after == 0
        gap = self.stored[STORED_FEATURES.index("log_gap_prev")]
        hour = self.start_hour[session].float() * (2 * math.pi / 24)
        column = dict(zip(STORED_FEATURES, self.stored.unbind(0), strict=True))
        column.update({name: ((self.flags >> bit) & 1).float() for bit, name in enumerate(FLAG_FEATURES)})
        column.update(
            log_dwell=gap.roll(-1).masked_fill(last, 0.0),  # the flat last event is a session's last
            dwell_known=(~last).float(),
            log_position=torch.log1p(position.float()),
            log_position_from_end=torch.log1p(after.float()),
            start_hour_sin=hour.sin(),
            start_hour_cos=hour.cos(),
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
            start_hour=self.start_hour[sessions],
            label=self.label[sessions],
        )
