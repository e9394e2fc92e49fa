"""Sessions from events: YOOCHOOSE sessions as given, cookie logs cut at inactivity.

An event with a `session_id` keeps it. An event without one belongs to its cookie's
session: a cookie's events in time order start a new session whenever more than the
configured gap passes between two of them. Such a session's id is
``"<cookie_id>:<epoch milliseconds of its first event>"``: readable, and the same
for the same events whatever date range is being built.

The result is the GRU4Rec layout: event row numbers in session order plus offsets, found
with numpy stable sorts on integer keys (the rank of the session or cookie id, then time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass
class Sessions:
    """Events grouped into sessions: session s is events rows[offsets[s]:offsets[s + 1]]."""

    rows: np.ndarray  # int64 [n_events] row numbers into the events frame
    offsets: np.ndarray  # int64 [n_sessions + 1], offsets[0] == 0, strictly increasing
    session_id: pl.Series  # String [n_sessions]

    @property
    def first_rows(self) -> np.ndarray:
        """Row number of each session's first event."""
        return self.rows[self.offsets[:-1]]


def sessionize(events: pl.DataFrame, gap_minutes: float) -> Sessions:
    """The sessions of `events` (columns session_id, cookie_id, ts, event_type as EVENT_TYPE_CODE,
    item_id, category; any row order).

    Each session's events are in (ts, event_type, item_id, category) order. Sessions with a given
    id come first, ordered by id, then cookie sessions ordered by (cookie_id, start): the result
    does not depend on the row order of `events`. A cookie session ends when the cookie's next
    event comes more than `gap_minutes` after its previous one. Rows lacking both session_id and
    cookie_id are a writer bug (ingestion quarantines them) and raise ValueError.
    """
    ts = events.get_column("ts").to_physical().to_numpy()
    time_key = ts * 8 + events.get_column("event_type").to_numpy()  # codes are < 8
    has_id = events.get_column("session_id").is_not_null().to_numpy()
    if events.get_column("cookie_id").is_null().to_numpy()[~has_id].any():
        raise ValueError("events without session_id and cookie_id cannot be sessionized")

    given, given_first = _owner_runs(events, "session_id", np.flatnonzero(has_id), time_key)
    cookie, new_cookie = _owner_runs(events, "cookie_id", np.flatnonzero(~has_id), time_key)
    idle = np.zeros(cookie.size, dtype=bool)
    idle[1:] = ts[cookie[1:]] - ts[cookie[:-1]] > round(gap_minutes * 60e6)
    cookie_first = np.flatnonzero(new_cookie | idle)

    cookie_start_rows = cookie[cookie_first]
    cookie_ids = pl.DataFrame(
        {"cookie": events.get_column("cookie_id").gather(cookie_start_rows), "ms": ts[cookie_start_rows] // 1000}
    ).select(pl.format("{}:{}", "cookie", "ms"))
    given_first = np.flatnonzero(given_first)
    return Sessions(
        rows=np.concatenate([given, cookie]),
        offsets=np.concatenate([given_first, given.size + cookie_first, [given.size + cookie.size]]).astype(np.int64),
        session_id=pl.concat(
            [events.get_column("session_id").gather(given[given_first]), cookie_ids.to_series()]
        ).rename("session_id"),
    )


def _owner_runs(
    events: pl.DataFrame, owner: str, rows: np.ndarray, time_key: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` sorted by (owner, ts, event_type, item_id, category), and a mask of where each owner's
    run starts. Owners become integer codes (their rank), so every sort is a numpy sort on integers;
    input that is already grouped and time-ordered (the usual case) sorts in linear time."""
    column = events.get_column(owner)
    codes = _ranks(column if rows.size == column.len() else column.gather(rows))
    order = np.argsort(codes, kind="stable")  # positions in `rows`
    key = time_key[rows[order]]
    if np.any((codes[order][1:] == codes[order][:-1]) & (key[1:] < key[:-1])):  # not time-ordered within owners
        order = np.argsort(time_key[rows], kind="stable")
        order = order[np.argsort(codes[order], kind="stable")]
        key = time_key[rows[order]]
    order, codes = rows[order], codes[order]
    new_owner = np.ones(order.size, dtype=bool)
    new_owner[1:] = codes[1:] != codes[:-1]
    same = np.zeros(order.size, dtype=bool)  # same owner, time and event type as the previous row
    same[1:] = ~new_owner[1:] & (key[1:] == key[:-1])
    if same.any():  # order each block of such rows by item and category
        at = np.flatnonzero(same | np.append(same[1:], False))
        ties = pl.DataFrame(
            {
                "block": np.cumsum(~same)[at],
                "row": order[at],
                "item_id": events.get_column("item_id").gather(order[at]),
                "category": events.get_column("category").gather(order[at]),
            }
        )
        order[at] = ties.sort("block", "item_id", "category").get_column("row").to_numpy()
    return order, new_owner


def _ranks(ids: pl.Series) -> np.ndarray:
    """Dense rank (in string order) of each id, found once per run of equal neighbouring ids."""
    run_starts = np.flatnonzero(np.diff(ids.rle_id().to_numpy(), prepend=-1))
    ranks = ids.gather(run_starts).rank("dense").cast(pl.Int64).to_numpy()
    return np.repeat(ranks, np.diff(np.append(run_starts, ids.len())))
