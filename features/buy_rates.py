"""Item and category buy rates from a training window, as per-event model inputs.

An item embedding needs many sessions of an item before it learns that the item sells; a
smoothed buy rate (target encoding, as the RecSys 2015 winners used) carries that from the
first sighting. For every id: the labelled training sessions containing it (each session once)
and how many of them bought, smoothed towards the window's buyer share with SMOOTHING
pseudo-sessions, fed to the model as log-odds.

On the training sessions themselves the counts leave out the session's own fold (FOLDS folds
by a stable hash of session_id), so a session's label never feeds its own features; every
other session (validation, scoring) uses all training counts.

Counting and lookups run on integer id codes (features.event_ids): a bincount per key over the
first sighting of each id in each session, then one gather per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features.event_ids import EventIds

FOLDS = 5
SMOOTHING = 20.0  # pseudo-sessions at the window's buyer share added to every id's counts
RATE_KEYS = ("item_id", "category")


@dataclass(frozen=True, eq=False)
class BuyCounts:
    """Per id of one key: labelled training sessions containing it and how many bought."""

    counts: pl.DataFrame  # id (String), sessions (Int64), buyers (Int64), ascending id
    prior: float  # buyer share of the labelled training sessions


def count_buyers(sequences: pl.DataFrame, key: str) -> BuyCounts:
    """Session and buyer counts per id of list column `key` over the labelled sessions.

    Deterministic: the same sessions in any row order give the same table.
    """
    return buy_counts(EventIds.of_lists(sequences.get_column(key)), sequences.get_column("label"))


def buy_counts(ids: EventIds, label: pl.Series) -> BuyCounts:
    """`count_buyers` of the events `ids` of sessions with labels `label` (Boolean, null: unknown)."""
    sessions, buyers = _session_counts(ids, label_values(label), np.zeros(label.len(), dtype=np.int8), 1)
    seen = np.flatnonzero(sessions)
    counts = pl.DataFrame(
        {"id": ids.ids.gather(seen), "sessions": sessions[seen], "buyers": buyers[seen]},
        schema={"id": pl.String, "sessions": pl.Int64, "buyers": pl.Int64},
    ).sort("id")
    known = label.drop_nulls()
    prior = float(known.cast(pl.Float64).mean()) if known.len() else 0.0
    return BuyCounts(counts=counts, prior=prior)


def event_counts(
    ids: pl.Series,
    session_of_event: np.ndarray,
    sequences: pl.DataFrame,
    rates: BuyCounts,
    *,
    out_of_fold: bool,
) -> pl.DataFrame:
    """Training sessions and buyers behind every event's id (Int64 columns `sessions`, `buyers`,
    order of `ids`; 0 for unseen ids). `ids` are the flat events of `sequences` in session runs,
    `session_of_event` each event's row. With `out_of_fold`, `sequences` must be the sessions `rates`
    was counted on: each session's own fold is left out, so its label never feeds its own counts."""
    coded = EventIds.of(ids, np.bincount(session_of_event, minlength=sequences.height))
    own = own_fold_counts(coded, sequences) if out_of_fold else None
    sessions, buyers = _counts_by_code(coded.ids, rates, own)
    slot = event_slots(coded, session_folds(sequences) if out_of_fold else None, coded.n_codes)
    return pl.DataFrame({"sessions": sessions[slot], "buyers": buyers[slot]})


@dataclass(frozen=True, eq=False)
class LogitTable:
    """Smoothed buy log-odds of one key's ids relative to the prior's, per code of known_ids()
    (features.event_ids), or out of fold per (fold, code)."""

    values: np.ndarray  # float32 [n_codes], or [FOLDS * n_codes] out of fold
    n_codes: int
    out_of_fold: bool

    def of_events(self, ids: EventIds, fold: np.ndarray | None) -> np.ndarray:
        """float32 log-odds of every event of `ids` (0 for unseen ids); `fold` is session_folds of
        its sessions, read only out of fold."""
        return self.values[event_slots(ids, fold if self.out_of_fold else None, self.n_codes)]


def logit_table(ids: pl.Series, rates: BuyCounts, own: tuple[np.ndarray, np.ndarray] | None) -> LogitTable:
    """The log-odds of every id of `ids` (features.event_ids.known_ids: one per code) from `rates`;
    out of fold when given `own`, own_fold_counts of the sessions `rates` was counted on."""
    sessions, buyers = _counts_by_code(ids, rates, own)
    counts = pl.DataFrame({"sessions": sessions, "buyers": buyers})
    logits = counts.select(_logit(rates.prior, pl.col("sessions"), pl.col("buyers")).cast(pl.Float32))
    return LogitTable(logits.to_series().to_numpy(), ids.len(), own is not None)


def own_fold_counts(ids: EventIds, sequences: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Labelled sessions and buyers per (fold, code) [FOLDS * n_codes] among `sequences`, whose
    events `ids` are: what out-of-fold counts leave out."""
    return _session_counts(ids, label_values(sequences.get_column("label")), session_folds(sequences), FOLDS)


def session_folds(sequences: pl.DataFrame) -> np.ndarray:
    """int8 fold (0 .. FOLDS - 1) of every session, by a stable hash of its session_id."""
    return (sequences.get_column("session_id").hash(seed=0) % FOLDS).cast(pl.Int8).to_numpy()


def _counts_by_code(
    ids: pl.Series, rates: BuyCounts, own: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(sessions, buyers) of every id of `ids` in `rates`: per code, or per (fold, code) [FOLDS * n_codes]
    with each fold's `own` counts (own_fold_counts) left out."""
    sessions, buyers = _code_counts(ids, rates)
    if own is None:
        return sessions, buyers
    return np.tile(sessions, FOLDS) - own[0], np.tile(buyers, FOLDS) - own[1]


def event_slots(ids: EventIds, fold: np.ndarray | None, n_codes: int) -> np.ndarray:
    """Each event's slot in a per-code table of `n_codes` codes: its code, or with `fold` (per
    session of `ids`: session_folds, or any grouping) fold * n_codes + code."""
    if fold is None:
        return ids.code
    return ids.per_session(fold).astype(np.int64) * n_codes + ids.code


def _code_counts(ids: pl.Series, rates: BuyCounts) -> tuple[np.ndarray, np.ndarray]:
    """(sessions, buyers) of every id of `ids` in `rates` (0 for ids it lacks, and for nulls)."""
    counts = rates.counts
    row = ids.replace_strict(
        counts.get_column("id"), pl.Series(np.arange(counts.height)), default=counts.height, return_dtype=pl.Int64
    ).to_numpy()  # each id's row in `counts`; past its end: not counted
    sessions = np.append(counts.get_column("sessions").to_numpy(), 0)[row]
    return sessions, np.append(counts.get_column("buyers").to_numpy(), 0)[row]


def counted_slots(ids: EventIds, label: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the labelled sessions of `ids` count: the slot (`slots`, each event's event_slots) of each
    id a session holds, once per id (events without an id count nowhere), and the slots of the buyers
    among them. `label` (label_values) is per session of `ids`, which should be a block of sessions:
    the temporaries are per event."""
    labelled = ids.per_session(label)
    counted = np.flatnonzero(ids.first_sighting & (ids.code != ids.missing) & (labelled >= 0))
    slot = slots[counted]
    return slot, slot[labelled[counted] == 1]


def add_counted(counts: tuple[np.ndarray, np.ndarray], slots: tuple[np.ndarray, np.ndarray]) -> None:
    """Add counted_slots to a (sessions, buyers) pair of per-slot tables, in place."""
    for table, slot in zip(counts, slots, strict=True):
        np.add.at(table, slot, 1)


def label_values(label: pl.Series) -> np.ndarray:
    """int8 per session: 1 buyer, 0 not, -1 unknown."""
    return label.cast(pl.Int8).fill_null(-1).to_numpy()


def _session_counts(
    ids: EventIds, label: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled sessions and buyers per (group of the session, code), flat [n_groups * n_codes]:
    each session counts once per id it holds; events without an id count nowhere."""
    counts = (np.zeros(n_groups * ids.n_codes, dtype=np.int64), np.zeros(n_groups * ids.n_codes, dtype=np.int64))
    for lo, hi, events in ids.blocks():
        block = ids.block(lo, hi, events)
        add_counted(counts, counted_slots(block, label[lo:hi], event_slots(block, group[lo:hi], ids.n_codes)))
    return counts


def _logit(prior: float, sessions: pl.Expr, buyers: pl.Expr) -> pl.Expr:
    """Buy log-odds smoothed with SMOOTHING pseudo-sessions at the (clipped) prior, relative to
    the prior's log-odds: 0 for an unseen id, so the input is centred whatever the base rate."""
    prior = min(max(prior, 1e-4), 1 - 1e-4)
    odds = (buyers + SMOOTHING * prior) / (sessions - buyers + SMOOTHING * (1 - prior))
    return (odds / (prior / (1 - prior))).log()
