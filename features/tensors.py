"""Sessions as flat event tensors plus offsets: the layout GRU4Rec's official code
batches from. Session i's events are rows ``offsets[i]:offsets[i+1]`` of every
per-event tensor, in time order. No per-session Python object exists anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

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

    def select(self, sessions: torch.Tensor) -> SequenceTensors:
        """The given sessions (int64 indices, any order), re-packed flat in that order."""
        starts = self.offsets[:-1][sessions]
        lengths = self.lengths[sessions]
        offsets = torch.zeros(sessions.numel() + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # event index of every selected event: start of its session + position within it
        session_of_event = torch.repeat_interleave(torch.arange(sessions.numel(), device=starts.device), lengths)
        position = torch.arange(int(offsets[-1]), device=starts.device) - offsets[:-1][session_of_event]
        events = starts[session_of_event] + position
        return SequenceTensors(
            offsets=offsets,
            item=self.item[events],
            category=self.category[events],
            event_type=self.event_type[events],
            continuous=self.continuous[events],
            label=self.label[sessions],
        )
