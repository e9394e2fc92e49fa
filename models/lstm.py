"""The buying-intent model: an LSTM over packed session sequences.

Each event is the concatenation of its item, category and event-type embeddings and its
continuous features (`SequenceTensors.continuous`, derived per batch on the batch's device).
`forward` gathers the batch's flat event rows straight into the time-major order of a
`PackedSequence` and embeds only those real events: no padding is ever built, embedded or
run through the LSTM. The head reads each session's final hidden state, beside (by
`ModelConfig`) the element-wise max of the LSTM's outputs over the session's steps and a few
session-level aggregates of the inputs (`SESSION_INPUTS`: counts, duration, shares of
revisits, mean buy rates) and the last event's own inputs, wide-and-deep style: a small MLP plus
a linear map of the same inputs. What the session ends on reaches the head without passing through
the recurrence, and the linear part keeps the logit rising with the evidence where every unit of
the MLP is off (without it, models fitted on small windows gave their top sessions one shared score).
`forward_padded` is the textbook path (pad, embed every slot, pack_padded_sequence,
pad_packed_sequence) kept as the reference the packed path is tested against and the naive
benchmark runs.

The module is a plain nn.Module (no closures, no open handles) so MLflow can pickle it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from clickstream.features.tensors import CONTINUOUS_FEATURES, PAD, SequenceTensors, session_positions
from clickstream.pipeline.core.config import ModelConfig

# The session-level inputs of the head, each a function of per-session sums of the events'
# inputs (so the running value after every event is a running sum): see session_inputs.
SESSION_INPUTS: tuple[str, ...] = (
    "log_events",  # log1p(events)
    "log_duration",  # log1p(seconds from the first to the last event)
    "repeat_share",  # share of events that revisit an item
    "same_category_share",  # share of events in the previous event's category
    "item_buy_logit_mean",
    "category_buy_logit_mean",
    "log_gap_mean",
)
_GAP = CONTINUOUS_FEATURES.index("log_gap_prev")
_SUMMED = [
    CONTINUOUS_FEATURES.index(name)
    for name in ("item_repeat", "same_category_as_previous", "item_buy_logit", "category_buy_logit", "log_gap_prev")
]


def event_summands(continuous: torch.Tensor) -> torch.Tensor:
    """float64 [..., 2 + 5] per event: 1 (the count), seconds since the previous event, then the
    inputs whose session mean SESSION_INPUTS holds. Summed over a session's events they give its
    session_inputs; float64 so that running sums over a batch stay exact to float32."""
    seconds = torch.expm1(continuous[..., _GAP : _GAP + 1].clamp(min=0.0))
    ones = torch.ones_like(seconds)
    return torch.cat([ones, seconds, continuous[..., _SUMMED]], dim=-1).double()


def session_inputs(sums: torch.Tensor) -> torch.Tensor:
    """float32 [..., len(SESSION_INPUTS)] from summed event_summands; all zeros for an empty session."""
    count = sums[..., :1]
    means = sums[..., 2:] / count.clamp(min=1.0)
    return torch.cat([torch.log1p(count), torch.log1p(sums[..., 1:2]), means], dim=-1).float()


def last_of_each(rows: torch.Tensor, offsets: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
    """[n_sessions, features]: each session's last event's row of `rows`, zeros for an empty
    session. `rows` is in flat event order, or in the order `position` maps flat events to."""
    lengths = offsets[1:] - offsets[:-1]
    if rows.shape[0] == 0:
        return rows.new_zeros(lengths.numel(), rows.shape[-1])
    last = (offsets[1:] - 1).clamp(min=0)
    if position is not None:
        last = position[last]
    return rows[last] * (lengths > 0).unsqueeze(-1)


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
        head_inputs = config.hidden_size * (2 if config.max_pool else 1)
        head_inputs += len(SESSION_INPUTS) if config.session_inputs else 0
        head_inputs += input_size if config.last_event else 0
        self.head = (
            nn.Sequential(nn.Linear(head_inputs, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, 1))
            if config.head_hidden
            else nn.Linear(head_inputs, 1)
        )
        # the wide part beside the MLP: where every ReLU unit is off the logit still follows the inputs
        self.head_linear = nn.Linear(head_inputs, 1) if config.head_linear and config.head_hidden else None

    def _continuous(self, batch: SequenceTensors, session: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The continuous inputs of the events at (`session`, `step`) this network was built for: the first
        `n_continuous` of CONTINUOUS_FEATURES (inputs added later come last, so older versions still score)."""
        return batch.continuous(session, step)[:, : self.n_continuous]

    def _event_features(
        self, item: torch.Tensor, category: torch.Tensor, event_type: torch.Tensor, continuous: torch.Tensor
    ) -> torch.Tensor:
        """[..., input_size] features of the given events (any leading shape). Dropout drops embedding
        units only: a continuous input dropped to 0 would read as a real value (a buy rate at the
        prior, no gap), not as a missing one."""
        embedded = torch.cat([self.item(item), self.category(category), self.event_type(event_type)], dim=-1)
        return torch.cat([self.input_dropout(embedded), continuous], dim=-1)

    def _score(
        self, hidden: torch.Tensor, pooled: torch.Tensor, sums: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """Logits [...] from final (or running) hidden states, their max over the steps so far,
        the summed event_summands so far and the features of the event so far."""
        parts = [hidden]
        if self.config.max_pool:
            parts.append(pooled)
        if self.config.session_inputs:
            parts.append(session_inputs(sums))
        if self.config.last_event:
            parts.append(last)
        inputs = self.head_dropout(torch.cat(parts, dim=-1))
        logits = self.head(inputs)
        if self.head_linear is not None:
            logits = logits + self.head_linear(inputs)
        return logits.squeeze(-1)

    def _run_packed(
        self, batch: SequenceTensors
    ) -> tuple[PackedLayout, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(layout, LSTM outputs [n_events, hidden] in packed order, final hidden [n_sessions, hidden]
        in batch order, flat event_summands [n_events, ...], event features [n_events, input_size]
        in packed order); zero hidden states for empty sessions."""
        layout = PackedLayout(batch.offsets)
        rows = layout.packed_rows
        continuous = self._continuous(batch, layout.session_of_event, layout.step)
        x = self._event_features(batch.item[rows], batch.category[rows], batch.event_type[rows], continuous[rows])
        hidden = x.new_zeros(batch.n_sessions, self.config.hidden_size)
        summands = event_summands(continuous)
        if layout.n_nonempty == 0:
            return layout, x.new_zeros(0, self.config.hidden_size), hidden, summands, x
        output, (h_n, _) = self.lstm(PackedSequence(x, layout.batch_sizes))
        hidden[: layout.n_nonempty] = h_n[-1]  # rows by rank
        return layout, output.data, hidden[layout.rank], summands, x

    def _summary_by_length(
        self, batch: SequenceTensors
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final hidden [n_sessions, hidden], max of the outputs over the steps, summed event_summands,
        the last event's features) in batch order (zeros for empty sessions), the sessions run in
        groups of one length, each a dense [length, group] block.

        The same recurrence as `_run_packed` (each session's is independent of the others'), but
        torch runs a dense block on its fused oneDNN kernel, forward and backward, where a ragged
        PackedSequence on the CPU runs step by step and its backward fills a zero tensor the size
        of the whole batch at every step (over half of a CPU training step, torch.profiler)."""
        n_events = int(batch.offsets[-1])
        session_of_event, step = session_positions(batch.offsets, n_events)
        continuous = self._continuous(batch, session_of_event, step)
        x = self._event_features(batch.item, batch.category, batch.event_type, continuous)
        hidden = x.new_zeros(batch.n_sessions, self.config.hidden_size)
        pooled = torch.zeros_like(hidden)
        lengths = batch.lengths
        order = torch.argsort(lengths, stable=True)
        for length, group in enumerate(order.split(torch.bincount(lengths).tolist())):
            if length == 0 or group.numel() == 0:
                continue
            rows = batch.offsets[group].unsqueeze(0) + torch.arange(length).unsqueeze(1)  # [length, group]
            output, (h_n, _) = self.lstm(x[rows])
            # .to: under bf16 autocast the LSTM answers in bf16; the summary stays float32
            hidden[group] = h_n[-1].to(hidden.dtype)
            pooled[group] = output.amax(dim=0).to(pooled.dtype)
        summands = event_summands(continuous)
        sums = summands.new_zeros(batch.n_sessions, summands.shape[1]).index_add_(0, session_of_event, summands)
        return hidden, pooled, sums, last_of_each(x, batch.offsets)

    def _summary_packed(self, batch: SequenceTensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What `_summary_by_length` returns, through one PackedSequence (the path for GPUs)."""
        layout, output, hidden, summands, x = self._run_packed(batch)
        session = layout.session_of_event[layout.packed_rows]  # of each packed row
        where = session[:, None].expand_as(output)
        pooled = hidden.new_zeros(hidden.shape).scatter_reduce_(0, where, output, "amax", include_self=False)
        sums = summands.new_zeros(batch.n_sessions, summands.shape[1]).index_add_(0, layout.session_of_event, summands)
        return hidden, pooled, sums, last_of_each(x, batch.offsets, layout.packed_position)

    def forward(self, batch: SequenceTensors) -> torch.Tensor:
        """Logits [n_sessions], in batch order. An empty session scores from zero states and inputs.
        On the CPU sessions run grouped by length (`_summary_by_length`), elsewhere packed."""
        if batch.offsets.device.type == "cpu" and batch.n_sessions:
            return self._score(*self._summary_by_length(batch))
        return self._score(*self._summary_packed(batch))

    def step_logits(self, batch: SequenceTensors) -> torch.Tensor:
        """Logit after each event [n_events], flat event order: the score the session would get
        if it ended there. The last event's logit equals `forward`'s for that session."""
        layout, output, _, summands, x = self._run_packed(batch)
        if output.numel() == 0:
            return output.new_zeros(0)
        grid, _ = pad_packed_sequence(PackedSequence(output, layout.batch_sizes))  # [steps, ranks, hidden]
        running_max = grid.cummax(dim=0).values[layout.step, layout.rank[layout.session_of_event]]
        totals = summands.cumsum(0)
        first = batch.offsets[:-1][layout.session_of_event]
        running_sums = totals - totals[first] + summands[first]
        position = layout.packed_position
        return self._score(output[position], running_max, running_sums, x[position])

    def forward_padded(self, batch: SequenceTensors) -> torch.Tensor:
        """Reference logits [n_sessions] via the padded path: pad to the longest session, embed
        every slot (padding included), pack_padded_sequence, max over the padded outputs with
        padding masked, sums over the padded slots. Sessions must be non-empty."""
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
        continuous[slot] = self._continuous(batch, *slot)
        x = self._event_features(padded["item"], padded["category"], padded["event_type"], continuous)
        packed = pack_padded_sequence(x, layout.lengths_cpu, batch_first=True, enforce_sorted=False)
        output, (h_n, _) = self.lstm(packed)
        steps, _ = pad_packed_sequence(output, batch_first=True, padding_value=float("-inf"))
        real = torch.arange(width, device=continuous.device) < layout.lengths_cpu.to(continuous.device)[:, None]
        sums = (event_summands(continuous) * real[..., None]).sum(dim=1)
        last = x[torch.arange(n, device=x.device), layout.lengths_cpu.to(x.device) - 1]
        return self._score(h_n[-1], steps.amax(dim=1), sums, last)
