"""The buying-intent model: an LSTM over packed session sequences.

Each event is the concatenation of its item, category and event-type embeddings and its
continuous features (`SequenceTensors.continuous`, derived per batch on the batch's device).
`forward` gathers the batch's flat event rows straight into the time-major order of a
`PackedSequence` and embeds only those real events: no padding is ever built, embedded or
run through the LSTM. The head reads each session's final hidden state. `forward_padded` is
the textbook path (pad, embed every slot, pack_padded_sequence) kept as the reference the
packed path is tested against and the naive benchmark runs.

The module is a plain nn.Module (no closures, no open handles) so MLflow can pickle it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from clickstream.features.tensors import PAD, SequenceTensors, session_positions
from clickstream.pipeline.core.config import ModelConfig


class PackedLayout:
    """Where each event of a batch goes in packed time-major order.

    Sessions are ranked by length, longest first (stable, so ties keep batch order); at step
    t the packed data holds the t-th event of every session longer than t, by rank. Empty
    sessions rank last and contribute no rows.
    """

    def __init__(self, offsets: torch.Tensor) -> None:
        lengths = offsets[1:] - offsets[:-1]
        n_sessions = lengths.numel()
        # the only host sync of a batch: PackedSequence wants batch_sizes on the CPU
        lengths_cpu = lengths.cpu()
        n_events = int(lengths_cpu.sum())
        max_length = int(lengths_cpu.max()) if n_sessions else 0
        # batch_sizes[t] = sessions longer than t
        at_most = torch.bincount(lengths_cpu, minlength=max_length + 1).cumsum(0)
        self.batch_sizes = (n_sessions - at_most[:max_length]).to(torch.int64)
        self.n_nonempty = int(self.batch_sizes[0]) if max_length else 0

        device = offsets.device
        order = torch.argsort(lengths, descending=True, stable=True)
        self.rank = torch.empty_like(order)
        self.rank[order] = torch.arange(n_sessions, device=device)
        step_start = torch.zeros(max_length, dtype=torch.int64)
        step_start[1:] = self.batch_sizes.cumsum(0)[:-1]
        session_of_event, step = session_positions(offsets, n_events)
        # packed_position[e]: row of flat event e in the packed data
        self.packed_position = step_start.to(device)[step] + self.rank[session_of_event]
        # packed_rows[p]: flat event at packed row p
        self.packed_rows = torch.empty_like(self.packed_position)
        self.packed_rows[self.packed_position] = torch.arange(n_events, device=device)
        self.session_of_event = session_of_event
        self.step = step
        self.lengths_cpu = lengths_cpu


class BuyIntentLSTM(nn.Module):
    """Logit of "this session ends in a purchase" from its event sequence."""

    def __init__(
        self, config: ModelConfig, n_items: int, n_categories: int, n_event_types: int, n_continuous: int
    ) -> None:
        super().__init__()
        self.config = config
        self.n_continuous = n_continuous
        self.item = nn.Embedding(n_items, config.item_dim, padding_idx=PAD)
        self.category = nn.Embedding(n_categories, config.category_dim, padding_idx=PAD)
        self.event_type = nn.Embedding(n_event_types, config.event_type_dim, padding_idx=PAD)
        input_size = config.item_dim + config.category_dim + config.event_type_dim + n_continuous
        self.input_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head_dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, 1)

    def _event_features(
        self, item: torch.Tensor, category: torch.Tensor, event_type: torch.Tensor, continuous: torch.Tensor
    ) -> torch.Tensor:
        """[..., input_size] features of the given events (any leading shape)."""
        parts = [self.item(item), self.category(category), self.event_type(event_type), continuous]
        return self.input_dropout(torch.cat(parts, dim=-1))

    def _run_packed(self, batch: SequenceTensors) -> tuple[PackedLayout, torch.Tensor, torch.Tensor]:
        """(layout, LSTM outputs [n_events, hidden] in packed order, final hidden [n_sessions, hidden]
        in batch order; zeros for empty sessions)."""
        layout = PackedLayout(batch.offsets)
        rows = layout.packed_rows
        continuous = batch.continuous(layout.session_of_event, layout.step)
        x = self._event_features(batch.item[rows], batch.category[rows], batch.event_type[rows], continuous[rows])
        hidden = x.new_zeros(batch.n_sessions, self.config.hidden_size)
        if layout.n_nonempty == 0:
            return layout, x.new_zeros(0, self.config.hidden_size), hidden
        output, (h_n, _) = self.lstm(PackedSequence(x, layout.batch_sizes))
        hidden[: layout.n_nonempty] = h_n[-1]  # rows by rank
        return layout, output.data, hidden[layout.rank]

    def _final_hidden_by_length(self, batch: SequenceTensors) -> torch.Tensor:
        """Final hidden state [n_sessions, hidden] in batch order (zeros for empty sessions), the
        sessions run in groups of one length, each a dense [length, group] block.

        The same recurrence as `_run_packed` (each session's is independent of the others'), but
        torch runs a dense block on its fused oneDNN kernel, forward and backward, where a ragged
        PackedSequence on the CPU runs step by step and its backward fills a zero tensor the size
        of the whole batch at every step (over half of a CPU training step, torch.profiler)."""
        n_events = int(batch.offsets[-1])
        session_of_event, step = session_positions(batch.offsets, n_events)
        continuous = batch.continuous(session_of_event, step)
        x = self._event_features(batch.item, batch.category, batch.event_type, continuous)
        hidden = x.new_zeros(batch.n_sessions, self.config.hidden_size)
        lengths = batch.lengths
        order = torch.argsort(lengths, stable=True)
        for length, group in enumerate(order.split(torch.bincount(lengths).tolist())):
            if length == 0 or group.numel() == 0:
                continue
            rows = batch.offsets[group].unsqueeze(0) + torch.arange(length).unsqueeze(1)  # [length, group]
            _, (h_n, _) = self.lstm(x[rows])
            hidden[group] = h_n[-1]
        return hidden

    def forward(self, batch: SequenceTensors) -> torch.Tensor:
        """Logits [n_sessions], in batch order. An empty session scores from a zero state.
        On the CPU sessions run grouped by length (`_final_hidden_by_length`), elsewhere packed."""
        if batch.offsets.device.type == "cpu" and batch.n_sessions:
            hidden = self._final_hidden_by_length(batch)
        else:
            hidden = self._run_packed(batch)[2]
        return self.head(self.head_dropout(hidden)).squeeze(-1)

    def step_logits(self, batch: SequenceTensors) -> torch.Tensor:
        """Logit after each event [n_events], flat event order: the score the session would get
        if it ended there. The last event's logit equals `forward`'s for that session."""
        layout, output, _ = self._run_packed(batch)
        return self.head(self.head_dropout(output)).squeeze(-1)[layout.packed_position]

    def forward_padded(self, batch: SequenceTensors) -> torch.Tensor:
        """Reference logits [n_sessions] via the padded path: pad to the longest session, embed
        every slot (padding included), pack_padded_sequence. Sessions must be non-empty."""
        layout = PackedLayout(batch.offsets)
        n, width = batch.n_sessions, int(layout.lengths_cpu.max())
        slot = (layout.session_of_event, layout.step)
        padded = {}
        for name in ("item", "category", "event_type"):
            flat = getattr(batch, name)
            grid = torch.full((n, width), PAD, dtype=flat.dtype, device=flat.device)
            grid[slot] = flat
            padded[name] = grid
        continuous = batch.stored.new_zeros(n, width, self.n_continuous)
        continuous[slot] = batch.continuous(*slot)
        x = self._event_features(padded["item"], padded["category"], padded["event_type"], continuous)
        packed = pack_padded_sequence(x, layout.lengths_cpu, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.head(self.head_dropout(h_n[-1])).squeeze(-1)
