"""Item and category buy rates from a training window, as per-event model inputs.

An item embedding needs many sessions of an item before it learns that the item sells; a
smoothed buy rate (target encoding, as the RecSys 2015 winners used) carries that from the
first sighting. For every id: the labelled training sessions containing it (each session once)
and how many of them bought, smoothed towards the window's buyer share with SMOOTHING
pseudo-sessions, fed to the model as log-odds, beside log1p of the session count: how much
evidence is behind the rate (a rate at the prior from 3 sessions and one from 3,000 differ).

On the training sessions themselves the counts leave out the session's own fold (FOLDS folds
by a stable hash of session_id), so a session's label never feeds its own features; every
other session (validation, scoring) uses all training counts. The counts are taken per fold
once, when the window is counted (`count_buyers`, and so `build_vocabulary`), and kept in
memory beside the totals, so loading the window out of fold counts nothing again.

Beside the rate of the sessions that hold an item, `item_id_end` is the rate of the sessions that
end on it: what a shopper looks at last says more about a purchase than what they passed on the
way (in the RecSys 2015 data as in the generator's world "appeal"), and an event's input from it
is the rate the session would have if it ended there.

Counting and lookups run on integer id codes (features.event_ids): per key, one count per
(fold, code) over the first sighting of each id in each session, then one gather per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from clickstream.features.event_ids import EventIds

FOLDS = 5
SMOOTHING = 20.0  # pseudo-sessions at the window's buyer share added to every id's counts
# Each buy-rate table by key: the list column of SEQUENCES whose ids it counts and looks up, and
# whether only each session's last event counts.
RATE_TABLES: dict[str, tuple[str, bool]] = {
    "item_id": ("item_id", False),
    "category": ("category", False),
    "item_id_end": ("item_id", True),
}
RATE_KEYS = tuple(RATE_TABLES)
RATE_COLUMNS = ("item_id", "category")  # the list columns the tables read


@dataclass(frozen=True, eq=False)
class BuyCounts:
    """Per id of one key: labelled training sessions containing it and how many bought."""

    counts: pl.DataFrame  # id (String), sessions (Int64), buyers (Int64), ascending id
    prior: float  # buyer share of the labelled training sessions
    # (sessions, buyers) int64 [FOLDS, counts.height]: the same counts per session fold, columns as the
    # rows of `counts`. Only in memory, for loading the counted sessions out of fold: not saved.
    by_fold: tuple[np.ndarray, np.ndarray] | None = None


def count_buyers(sequences: pl.DataFrame, key: str) -> BuyCounts:
    """Session and buyer counts per id of list column `key` over the labelled sessions, with the
    counts per fold. Deterministic: the same sessions in any row order give the same table.
    """
    return buy_counts(counted_ids(sequences, key), sequences.get_column("label"), session_folds(sequences))


def counted_ids(sequences: pl.DataFrame, key: str) -> EventIds:
    """The ids that table `key` (RATE_TABLES) counts, in session runs of `sequences`' rows."""
    column, last_only = RATE_TABLES[key]
    lists = sequences.get_column(column)
    return EventIds.of_lists(lists.list.slice(-1, 1) if last_only else lists)


def buy_counts(ids: EventIds, label: pl.Series, fold: np.ndarray) -> BuyCounts:
    """`count_buyers` of the events `ids` of sessions with labels `label` (Boolean, null: unknown)
    and folds `fold` (session_folds)."""
    known = label.drop_nulls()
    prior = float(known.cast(pl.Float64).mean()) if known.len() else 0.0
    return counts_of(fold_counts(ids, label, fold), prior)


def fold_counts(ids: EventIds, label: pl.Series, fold: np.ndarray) -> pl.DataFrame:
    """Labelled sessions and buyers per (id, fold) of the events `ids` of sessions with labels `label`
    and folds `fold`: columns `id` (String), `fold` (Int8), `sessions`, `buyers` (Int64), only the
    pairs that occur. Counts of disjoint session sets add up row by row (what `counts_of` reads)."""
    sessions, buyers = _session_counts(ids, _label_values(label), fold, FOLDS)
    seen = np.flatnonzero(sessions)
    return pl.DataFrame(
        {
            "id": ids.ids.gather(seen % ids.n_codes),
            "fold": (seen // ids.n_codes).astype(np.int8),
            "sessions": sessions[seen],
            "buyers": buyers[seen],
        },
        schema=FOLD_COUNTS,
    )


FOLD_COUNTS = pl.Schema({"id": pl.String, "fold": pl.Int8, "sessions": pl.Int64, "buyers": pl.Int64})


def counts_of(by_fold: pl.DataFrame, prior: float) -> BuyCounts:
    """The BuyCounts of `fold_counts` rows (several rows of one (id, fold) are summed) and the prior."""
    ids = by_fold.get_column("id").unique().sort()
    summed = (
        by_fold.group_by("id", "fold")
        .agg(pl.col("sessions", "buyers").sum())
        .join(ids.to_frame().with_row_index("slot"), on="id")
    )
    position = summed.select(pl.col("fold").cast(pl.Int64) * ids.len() + pl.col("slot")).to_series().to_numpy()
    tables = []
    for name in ("sessions", "buyers"):
        table = np.zeros(FOLDS * ids.len(), dtype=np.int64)
        table[position] = summed.get_column(name).to_numpy()
        tables.append(table.reshape(FOLDS, ids.len()))
    counts = pl.DataFrame(
        {"id": ids, "sessions": tables[0].sum(axis=0), "buyers": tables[1].sum(axis=0)},
        schema={"id": pl.String, "sessions": pl.Int64, "buyers": pl.Int64},
    )
    return BuyCounts(counts=counts, prior=prior, by_fold=(tables[0], tables[1]))


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
    sessions, buyers = _counts_by_code(coded.ids, rates, out_of_fold=out_of_fold)
    slot = event_slots(coded, session_folds(sequences) if out_of_fold else None, coded.n_codes)
    return pl.DataFrame({"sessions": sessions[slot], "buyers": buyers[slot]})


@dataclass(frozen=True, eq=False)
class CodeTable:
    """One float32 input of one key's ids per code of known_ids() (features.event_ids), or out of
    fold per (fold, code)."""

    values: np.ndarray  # float32 [n_codes], or [FOLDS * n_codes] out of fold
    n_codes: int
    out_of_fold: bool

    def of_events(self, ids: EventIds, fold: np.ndarray | None) -> np.ndarray:
        """float32 value of every event of `ids` (0 for unseen ids); `fold` is session_folds of
        its sessions, read only out of fold."""
        return self.values[self.slots(ids, fold)]

    def slots(self, ids: EventIds, fold: np.ndarray | None) -> np.ndarray:
        """Each event's index into `values`: the same for every table of the same ids built with
        the same `out_of_fold`, so one lookup can serve them all."""
        return event_slots(ids, fold if self.out_of_fold else None, self.n_codes)


def logit_table(ids: pl.Series, rates: BuyCounts, *, out_of_fold: bool) -> CodeTable:
    """The smoothed buy log-odds, relative to the prior's, of every id of `ids`
    (features.event_ids.known_ids: one per code) from `rates`; `out_of_fold` for the sessions
    `rates` was counted on (see _counts_by_code)."""
    sessions, buyers = _counts_by_code(ids, rates, out_of_fold=out_of_fold)
    counts = pl.DataFrame({"sessions": sessions, "buyers": buyers})
    logits = counts.select(_logit(rates.prior, pl.col("sessions"), pl.col("buyers")).cast(pl.Float32))
    return CodeTable(logits.to_series().to_numpy(), ids.len(), out_of_fold)


def evidence_table(ids: pl.Series, rates: BuyCounts, *, out_of_fold: bool) -> CodeTable:
    """log1p of the labelled training sessions behind the buy rate of every id of `ids`
    (`logit_table`: the same counts, the same out-of-fold rule); 0 for ids `rates` lacks."""
    sessions, _ = _counts_by_code(ids, rates, out_of_fold=out_of_fold)
    return CodeTable(np.log1p(sessions).astype(np.float32), ids.len(), out_of_fold)


def session_folds(sequences: pl.DataFrame) -> np.ndarray:
    """int8 fold (0 .. FOLDS - 1) of every session, by a stable hash of its session_id."""
    return (sequences.get_column("session_id").hash(seed=0) % FOLDS).cast(pl.Int8).to_numpy()


def _counts_by_code(ids: pl.Series, rates: BuyCounts, *, out_of_fold: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sessions, buyers) of every id of `ids` in `rates` (0 for ids it lacks, and for nulls): per code,
    or out of fold per (fold, code), flat [FOLDS * n_codes], each fold's own counts left out."""
    counts = rates.counts
    row = ids.replace_strict(
        counts.get_column("id"), pl.Series(np.arange(counts.height)), default=counts.height, return_dtype=pl.Int64
    ).to_numpy()  # each id's row in `counts`; past its end: not counted
    sessions = np.append(counts.get_column("sessions").to_numpy(), 0)[row]
    buyers = np.append(counts.get_column("buyers").to_numpy(), 0)[row]
    if not out_of_fold:
        return sessions, buyers
    if rates.by_fold is None:
        raise ValueError(
            "out-of-fold buy rates need the counts per fold that count_buyers keeps in memory; saved ones have none"
        )
    own = [np.pad(table, ((0, 0), (0, 1)))[:, row] for table in rates.by_fold]  # [FOLDS, n_codes]
    return (sessions - own[0]).ravel(), (buyers - own[1]).ravel()


def event_slots(ids: EventIds, fold: np.ndarray | None, n_codes: int) -> np.ndarray:
    """Each event's slot in a per-code table of `n_codes` codes: its code, or with `fold` (per
    session of `ids`: session_folds, or any grouping) fold * n_codes + code."""
    if fold is None:
        return ids.code
    return ids.per_session(fold).astype(np.int64) * n_codes + ids.code


def _label_values(label: pl.Series) -> np.ndarray:
    """int8 per session: 1 buyer, 0 not, -1 unknown."""
    return label.cast(pl.Int8).fill_null(-1).to_numpy()


def _session_counts(
    ids: EventIds, label: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled sessions and buyers per (group of the session, code), flat [n_groups * n_codes]:
    each session counts once per id it holds; events without an id count nowhere."""
    sessions = np.zeros(n_groups * ids.n_codes, dtype=np.int64)
    buyers = np.zeros(n_groups * ids.n_codes, dtype=np.int64)
    for lo, hi, events in ids.blocks():  # block-sized temporaries
        block = ids.block(lo, hi, events)
        labelled = block.per_session(label[lo:hi])
        counted = np.flatnonzero(block.first_sighting & (block.code != block.missing) & (labelled >= 0))
        slot = event_slots(block, group[lo:hi], ids.n_codes)[counted]
        np.add.at(sessions, slot, 1)
        np.add.at(buyers, slot[labelled[counted] == 1], 1)
    return sessions, buyers


def _logit(prior: float, sessions: pl.Expr, buyers: pl.Expr) -> pl.Expr:
    """Buy log-odds smoothed with SMOOTHING pseudo-sessions at the (clipped) prior, relative to
    the prior's log-odds: 0 for an unseen id, so the input is centred whatever the base rate."""
    prior = min(max(prior, 1e-4), 1 - 1e-4)
    odds = (buyers + SMOOTHING * prior) / (sessions - buyers + SMOOTHING * (1 - prior))
    return (odds / (prior / (1 - prior))).log()
