"""SEQUENCES frames -> SequenceTensors (features.tensors), a block of sessions at a time, with
no Python per session or event."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from clickstream.features.buy_rates import RATE_COLUMNS, RATE_TABLES, evidence_table, logit_table, session_folds
from clickstream.features.event_ids import BLOCK_EVENTS, EventIds, known_ids, session_blocks
from clickstream.features.tensors import CONTINUOUS_FEATURES, FLAG_FEATURES, STORED_FEATURES, SequenceTensors
from clickstream.pipeline.core.schemas import EVENT_TYPES

if TYPE_CHECKING:

    from clickstream.features.buy_rates import CodeTable
    from clickstream.features.vocabulary import Vocabulary

_THREADS = 2  # blocks filled at once: the 2-core machine this runs on

# The SEQUENCES columns load_tensors reads: a reader need not decode the others.
TENSOR_COLUMNS = (
    "session_id",
    "label",
    "start_hour",
    "item_id",
    "category",
    "event_type",
    "log_gap_prev",
)



def load_tensors(sequences: pl.DataFrame, vocabulary: Vocabulary, *, out_of_fold: bool = False) -> SequenceTensors:
    """Flat CPU tensors of the sessions of a SEQUENCES frame, sessions in the frame's row order and
    each session's events in list order; items and categories through `vocabulary`.

    Reads only TENSOR_COLUMNS. No Python runs per session or event: list columns are taken as flat
    values, ids as integer codes (features.event_ids), a block of sessions at a time so that no
    temporary is as large as the frame. `label` is NaN where unknown. `out_of_fold` is for the
    training sessions the vocabulary was built from (in this process: the counts per fold are not
    saved): their buy-rate and evidence inputs then leave out their own fold (features.buy_rates).
    """
    sequences = sequences.with_columns(pl.col(RATE_COLUMNS).cast(pl.List(pl.Categorical)))  # as read: a no-op
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
        tables={
            name: table(known, vocabulary.rates[key], out_of_fold=out_of_fold)
            for name, (key, table) in _RATE_FEATURES.items()
        },
        fold=session_folds(sequences) if out_of_fold else None,
    )
    tensors = SequenceTensors(
        offsets=torch.from_numpy(offsets),
        item=torch.empty(n_events, dtype=torch.int32),
        category=torch.empty(n_events, dtype=torch.int32),
        event_type=torch.empty(n_events, dtype=torch.int32),
        stored=torch.empty(len(STORED_FEATURES), n_events),
        flags=torch.empty(n_events, dtype=torch.uint8),
        start_hour=torch.from_numpy(sequences.get_column("start_hour").cast(pl.Int32).to_numpy(writable=True)),
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
    tables: dict[str, CodeTable]  # by the stored feature they fill (_RATE_FEATURES)
    fold: np.ndarray | None  # int8 [n_sessions] out of fold (features.buy_rates.session_folds), else None

    def fill(self, tensors: SequenceTensors, lo: int, hi: int) -> None:
        """Write the events of sessions lo..hi-1 into the per-event tensors."""
        part = self.sequences.slice(lo, hi - lo)
        first, end = self.offsets[lo], self.offsets[hi]

        def flat(name: str) -> pl.Series:
            return part.get_column(name).explode(empty_as_null=False, keep_nulls=False)

        lengths = np.diff(self.offsets[lo : hi + 1])
        ids = {column: EventIds.of(flat(column), lengths, self.known) for column in RATE_COLUMNS}
        items, categories = ids["item_id"], ids["category"]
        stored = dict(zip(STORED_FEATURES, tensors.stored.numpy()[:, first:end], strict=True))
        stored["log_gap_prev"][:] = flat("log_gap_prev").to_numpy()
        fold = None if self.fold is None else self.fold[lo:hi]
        slots: dict[str, np.ndarray] = {}  # per column: its tables share their codes and fold rule
        for name, (key, _) in _RATE_FEATURES.items():
            column, table = RATE_TABLES[key][0], self.tables[name]
            if column not in slots:
                slots[column] = table.slots(ids[column], fold)
            stored[name][:] = table.values[slots[column]]
        session_start = self.offsets[lo:hi][lengths > 0] - first
        flags = {
            "item_repeat": ~items.first_sighting,
            "same_item_as_previous": items.same_as_previous(session_start),
            "same_category_as_previous": categories.same_as_previous(session_start),
            "category_repeat": ~categories.first_sighting & (categories.code != categories.missing),
        }
        packed = tensors.flags.numpy()[first:end]
        packed[:] = 0
        for bit, name in enumerate(FLAG_FEATURES):
            packed |= flags[name].view(np.uint8) << bit
        tensors.item.numpy()[first:end] = self.item_index[items.code]
        tensors.category.numpy()[first:end] = self.category_index[categories.code]
        tensors.event_type.numpy()[first:end] = flat("event_type").to_numpy() + 1


# The stored features read from the training window's buy counts: the counts' key (RATE_TABLES, which
# names the column whose ids look them up) and the table of each.
_RATE_FEATURES = {
    "item_buy_logit": ("item_id", logit_table),
    "category_buy_logit": ("category", logit_table),
    "item_evidence": ("item_id", evidence_table),
    "category_evidence": ("category", evidence_table),
    "item_end_buy_logit": ("item_id_end", logit_table),
    "item_end_evidence": ("item_id_end", evidence_table),
}


def feature_schema() -> str:
    """A short hash of the model's input spec (the sequence columns read, the event types and the
    continuous features in order): versions with the same hash take the same inputs, so one can
    stand in for another. Registered as each model version's `feature_schema` tag."""
    spec = {"columns": TENSOR_COLUMNS, "event_types": EVENT_TYPES, "continuous": CONTINUOUS_FEATURES}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
