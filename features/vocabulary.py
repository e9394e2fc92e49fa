"""Item and category vocabularies: raw ids -> embedding indices, built from a training window.

Indices 0 (PAD) and 1 (OOV) are reserved in both. Items seen at least
`item_min_count` times get 2, 3, ... by descending count (ties by id); every other item maps to
OOV, or, with `item_hash_buckets` > 0, to one of that many buckets after the known items by a
stable hash of its id (the same id lands in the same bucket in every process and version).

Category kinds stay apart: unknown ("0" or missing), the numbered categories "1".."12" and the
special offer "S" have fixed indices, always present; brands (8-10 digit ids) and any other
category strings seen at least `category_min_count` times are learned; an unseen brand maps to
its own OOV_BRAND index, an unseen other string to OOV.

The vocabulary also carries the training window's buy counts per item and category, and per
item that sessions end on (features.buy_rates), so the model's buy-rate inputs are applied unchanged at scoring time.

A vocabulary is saved as small Parquet tables and a JSON file; its `version` is a hash of
its content, so a model records exactly which vocabulary it was trained with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from clickstream.features.buy_rates import (
    FOLD_COUNTS,
    RATE_KEYS,
    BuyCounts,
    counted_ids,
    counts_of,
    fold_counts,
    session_folds,
)
from clickstream.features.event_ids import EventIds
from clickstream.pipeline.core.config import SequenceConfig

# Index 0 is padding in every categorical tensor (features.tensors.PAD, never assigned here);
# index 1 is "out of vocabulary".
OOV = 1
OOV_BRAND = 2
UNKNOWN_CATEGORY = "0"
FIXED_CATEGORIES = (UNKNOWN_CATEGORY, *(str(n) for n in range(1, 13)), "S")  # indices 3 .. 16
BRAND_PATTERN = r"^\d{8,10}$"
_FIRST_ITEM = 2
_FIRST_CATEGORY = OOV_BRAND + 1
_FILES = ("items.parquet", "categories.parquet", "vocabulary.json")
_RATE_FILES = {key: f"{key}_buy_counts.parquet" for key in RATE_KEYS}


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Raw id -> index tables (columns `id`, `index`, ascending index), how unseen ids map, and
    the training window's buy counts per key of RATE_KEYS."""

    items: pl.DataFrame
    categories: pl.DataFrame
    rates: dict[str, BuyCounts]
    item_hash_buckets: int = 0

    @property
    def n_items(self) -> int:
        """Size of the item embedding table (PAD, OOV, known items, hash buckets)."""
        return _FIRST_ITEM + self.items.height + self.item_hash_buckets

    @property
    def n_categories(self) -> int:
        """Size of the category embedding table (PAD, OOV, OOV_BRAND, fixed and learned categories)."""
        return _FIRST_CATEGORY + self.categories.height

    @property
    def version(self) -> str:
        """12 hex digits of a SHA-256 over the content: equal vocabularies, equal versions."""
        digest = hashlib.sha256(f"buckets={self.item_hash_buckets}\n".encode())
        for table in (self.items, self.categories):
            digest.update(table.get_column("id").str.join("\n").item().encode())
            digest.update(b"\x00")
        for key in RATE_KEYS:
            rates = self.rates[key]
            digest.update(f"{key}:{rates.prior!r}\n".encode())
            digest.update(rates.counts.write_csv().encode())
        return digest.hexdigest()[:12]

    def item_index(self, ids: pl.Series) -> np.ndarray:
        """int64 index of every raw item id (String), same order (null -> OOV)."""
        items = self.items
        index = ids.replace_strict(
            items.get_column("id"), items.get_column("index"), default=None, return_dtype=pl.Int64
        )
        if self.item_hash_buckets:
            unseen = index.is_null() & ids.is_not_null()
            hashed = _FIRST_ITEM + items.height + stable_hash(ids.filter(unseen)) % self.item_hash_buckets
            index = index.scatter(unseen.arg_true(), pl.Series(hashed.astype(np.int64)))
        return index.fill_null(OOV).to_numpy()

    def category_index(self, ids: pl.Series) -> np.ndarray:
        """int64 index of every raw category (String), same order (null -> unknown "0")."""
        raw = ids.fill_null(UNKNOWN_CATEGORY)
        table = self.categories
        known = raw.replace_strict(table.get_column("id"), table.get_column("index"), default=None)
        unseen_brand = known.is_null() & raw.str.contains(BRAND_PATTERN)
        index = pl.select(pl.when(unseen_brand).then(OOV_BRAND).otherwise(known).fill_null(OOV)).to_series()
        return index.cast(pl.Int64).to_numpy()

    def save(self, directory: Path) -> list[Path]:
        """Write the vocabulary into `directory` (created if needed); returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        items, categories, meta = (directory / name for name in _FILES)
        self.items.write_parquet(items)
        self.categories.write_parquet(categories)
        rate_files = [directory / _RATE_FILES[key] for key in RATE_KEYS]
        for key, path in zip(RATE_KEYS, rate_files, strict=True):
            self.rates[key].counts.write_parquet(path)
        meta.write_text(
            json.dumps(
                {
                    "version": self.version,
                    "item_hash_buckets": self.item_hash_buckets,
                    "n_items": self.n_items,
                    "n_categories": self.n_categories,
                    "buy_rate_priors": {key: self.rates[key].prior for key in RATE_KEYS},
                },
                indent=2,
            )
        )
        return [items, categories, *rate_files, meta]

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        """The vocabulary `save` wrote; ValueError if its files do not match their recorded version."""
        items, categories, meta = (directory / name for name in _FILES)
        recorded = json.loads(meta.read_text())
        rates = {
            key: BuyCounts(pl.read_parquet(directory / _RATE_FILES[key]), float(recorded["buy_rate_priors"][key]))
            for key in RATE_KEYS
        }
        vocabulary = cls(pl.read_parquet(items), pl.read_parquet(categories), rates, int(recorded["item_hash_buckets"]))
        if vocabulary.version != recorded["version"]:
            raise ValueError(f"vocabulary in {directory} does not match its version {recorded['version']}")
        return vocabulary


def build_vocabulary(sequences: pl.DataFrame, config: SequenceConfig) -> Vocabulary:
    """The vocabulary of the items and categories in `sequences` (the training window's input events).

    Deterministic: the same sessions in any row order give the same vocabulary and version.
    """
    counts = WindowCounts()
    counts.add(sequences)
    return counts.vocabulary(config)


class WindowCounts:
    """A training window's counts, its sessions added a frame at a time: `vocabulary` then gives
    exactly what build_vocabulary gives on all of them at once, in any split and order, holding
    one row per id (and fold) seen, never the sessions."""

    def __init__(self) -> None:
        self._events: dict[str, pl.DataFrame] = {}  # per list column: id, count
        self._sessions: dict[str, pl.DataFrame] = {}  # per key of RATE_KEYS: buy_rates.fold_counts
        self.sessions = 0  # labelled sessions added
        self.buyers = 0

    def add(self, sequences: pl.DataFrame) -> None:
        """Count the sessions of a SEQUENCES frame (each session once over all calls)."""
        ids = {key: counted_ids(sequences, key) for key in RATE_KEYS}
        folds = session_folds(sequences)
        label = sequences.get_column("label")
        for key in RATE_KEYS:
            self._sessions[key] = _summed(self._sessions.get(key), fold_counts(ids[key], label, folds), ["id", "fold"])
        for column in ("item_id", "category"):
            self._events[column] = _summed(self._events.get(column), _event_counts(ids[column]), ["id"])
        self.sessions += label.count()
        self.buyers += int(label.sum())

    def vocabulary(self, config: SequenceConfig) -> Vocabulary:
        """The vocabulary of every session added so far."""
        prior = self.buyers / self.sessions if self.sessions else 0.0
        items = _frequent(self._events.get("item_id"), config.item_min_count)
        learned = _frequent(self._events.get("category"), config.category_min_count)
        learned = learned.filter(~learned.is_in(FIXED_CATEGORIES))
        categories = pl.concat([pl.Series("id", FIXED_CATEGORIES, dtype=pl.String), learned])
        empty = pl.DataFrame(schema=FOLD_COUNTS)
        return Vocabulary(
            items=_indexed(items, _FIRST_ITEM),
            categories=_indexed(categories, _FIRST_CATEGORY),
            rates={key: counts_of(self._sessions.get(key, empty), prior) for key in RATE_KEYS},
            item_hash_buckets=config.item_hash_buckets,
        )


def stable_hash(ids: pl.Series) -> np.ndarray:
    """uint64 FNV-1a-style hash of each string's UTF-8 bytes, vectorised; the same in every process."""
    array = ids.cast(pl.String).to_arrow().cast("large_string")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if len(array) else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    result = np.full(len(array), 0xCBF29CE484222325, dtype=np.uint64)
    # one pass per byte position (ids are short), vectorised over all strings of at least that length
    for position in range(int(lengths.max()) if lengths.size else 0):
        alive = lengths > position
        byte = data[offsets[:-1][alive] + position].astype(np.uint64)
        result[alive] = (result[alive] ^ byte) * np.uint64(0x100000001B3)
    return result


def _event_counts(ids: EventIds) -> pl.DataFrame:
    """Events per id (columns `id`, `count`), ids without events left out."""
    counts = np.zeros(ids.n_codes, dtype=np.int64)
    for _, _, events in ids.blocks():  # block-sized temporaries
        counts += np.bincount(ids.code[events], minlength=ids.n_codes)
    counts[ids.missing] = 0
    seen = np.flatnonzero(counts)
    return pl.DataFrame(
        {"id": ids.ids.gather(seen), "count": counts[seen]}, schema={"id": pl.String, "count": pl.Int64}
    )


def _summed(held: pl.DataFrame | None, more: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """`held` and `more` as one table of per-key sums (columns in `more`'s order)."""
    if held is None:
        return more
    return pl.concat([held, more]).group_by(keys).agg(pl.exclude(keys).sum()).select(more.columns)


def _frequent(counts: pl.DataFrame | None, min_count: int) -> pl.Series:
    """Ids of at least `min_count` (and at least one) events, by descending count then id."""
    if counts is None:
        return pl.Series("id", [], dtype=pl.String)
    kept = counts.filter(pl.col("count") >= max(min_count, 1))
    return kept.sort(["count", "id"], descending=[True, False]).get_column("id")


def _indexed(ids: pl.Series, first: int) -> pl.DataFrame:
    return pl.DataFrame({"id": ids.cast(pl.String), "index": np.arange(first, first + ids.len(), dtype=np.int64)})
