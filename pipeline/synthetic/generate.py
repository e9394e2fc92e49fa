"""`clickstream generate`: synthetic raw logs with YOOCHOOSE's statistics and a known,
order-dependent buying signal, so models can be judged against the truth.

Formats (those `clickstream ingest` reads: docs/data-formats.md)
    yoochoose  `yoochoose-clicks.dat` (session_id,timestamp,item_id,category) and
               `yoochoose-buys.dat` (session_id,timestamp,item_id,price,quantity), no header,
               timestamps `2014-04-07T10:51:09.277Z`. Rows are ordered by session, then time.
    events     `events.csv`, header `cookie_id,ts,event_type,item_id,category,price,quantity`,
               no session id: a cookie's sessions are more than 31 minutes apart and the gaps
               inside a session at most 25 minutes, so cutting at 30 minutes of inactivity
               recovers them exactly. A cookie (16 hex digits) has about 2.2 sessions, all in one
               block of 500,000 consecutive sessions; rows are ordered by time within a block.
    Both       `truth.parquet`: one row per session, `session_id` (string), `cookie_id` (null for
               yoochoose), `session_start` (first event, UTC), `p_buy` (the probability the
               generator used), `label` (bool: the session bought).

Statistics
    Session length: 85% geometric (mean 2.9) + 15% Pareto tail, capped at 200 clicks: mean
    about 3.6, 29% single clicks. Catalogue of 16 * sqrt(sessions) items (200 to 50,000), Zipf
    popularity (exponent 1.05), one fixed category per item: "0" 55%, "1".."12" 30%, "S" 8%,
    brand ids (8-10 digits) 7%. Click i+1 re-clicks click i (12%), returns to an item of clicks
    0..i-1 (15%), stays in click i's category (30%) or picks by popularity. Gaps between clicks
    lognormal (median 40 s, sigma 1.1) clipped to 1 s .. 25 min. Session starts follow a daily
    rhythm (UTC): quiet from 1 to 6 h, an evening peak at 20 h. Buys come 20 s to 20 min after
    the last click, of items clicked in the session (always the last clicked item, each other
    clicked item with 20%), quantity mostly 1; price and quantity are 0 (unknown) in 8% of buys.
    Event logs add `add_to_cart` after 5% of views and `remove_from_cart` after 30% of those,
    independently of the outcome (so they carry no extra signal), and `purchase` rows for buys.

Worlds (`--world`, pipeline.synthetic.sessions.WORLDS): the statistics above and the rule below
are world "default". Every world writes the same formats and truth; the others differ in
session lengths, catalogue and buying rule, so defaults are judged on more than one rule:
    counts   longer sessions (mean about 5.4, 18% single clicks), 8 * sqrt(sessions) items.
             logit = -3.97 + 0.9 ln L - 1.2 * distinct items / L + 0.45 * clip(ln(1 + duration / 120 s), 0, 4)
             + 0.35 * clip(mean ln(dwell / 40 s), -2, 2) + 0.8 * mean propensity: any order of the
             same clicks buys alike, per-session aggregates are nearly enough (truth AUC about 0.83).
    appeal   short sessions (mean about 2.6, 41% single), 24 * sqrt(sessions) items whose
             propensity is mostly their own (N(0, 0.9); category effects * 0.4).
             logit = -4.35 + 0.3 ln L + 1.3 * propensity(i_L) + 0.5 * max_k propensity(i_k)
             + 0.8 * [i_L clicked at least twice] + 0.2 * linger: what the session ends on (about 0.86).
    order    heavier tail (mean about 4.9), 12 * sqrt(sessions) items.
             logit = -4.4 + 0.25 ln L + 1.5 * [the last click's category was left for another one and
             returned to] + 1.4 * sum_k [i_k returns to an earlier item, not a reload] * 0.6^(L-k)
             - 1.0 * [the last category is new to the session] + 0.6 * [first and last category
             agree, L >= 3]: the order of categories and returns (about 0.86).
    All worlds buy 5.4% to 6.0% of sessions.

The buying rule of world "default" (pipeline.synthetic.sessions), per session of L clicks i_1..i_L:
    logit p_buy = -4.32
        + 0.55 * ln L
        + 3.0 * interest_L                              what the shopper looked at longest
        + 1.6 * [i_L equals some i_k with k <= L-2]     back to an item seen before another one
        + 1.3 * [categories of i_{L-2}, i_{L-1}, i_L are one, and not "0"]   the end is focused
        + 0.3 * clip(ln(gap before the last click / 40 s), -2, 2)           lingered before it
    interest_0 = 0, interest_k = (1 - a_k) * interest_{k-1} + a_k * propensity(i_k) with
    a_k = d_k / (d_k + 40 s), d_k the dwell on click k (time to the next click; 10 s for the
    last click). An item's propensity is fixed: its category's effect ("0": 0, "1".."12":
    -0.8 .. +0.8, "S": +0.6, brands ~ N(0, 0.6)) + N(0, 0.4).
    label ~ Bernoulli(p_buy). The rule reads only the clicks, which every downstream input keeps,
    so p_buy is the best score any model can reach (truth AUC about 0.84); 5.5% of sessions buy.
    The same clicks in another order, or the same dwell times on other items, give another
    p_buy: per-session aggregates and last-item features miss part of it.

Determinism and ids
    The same arguments give byte-identical files. The catalogue depends on (seed, sessions), so
    calls with the same seed and session count (e.g. a demo generating day after day) share
    items; each day's session start times come from a stream seeded by (seed, date). Session ids
    are derived from the date: days since 1970-01-01 * 10,000,000 + rank of the session's start
    that day (1-based), e.g. 161610000001 on 2014-04-01. Calls for different dates never
    collide; at most 9,999,999 sessions a day.
"""

from __future__ import annotations

import binascii
import datetime as dt
import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.formats import GENERATED
from clickstream.pipeline.synthetic.sessions import (
    DAY_MS,
    WORLDS,
    Catalogue,
    Clicks,
    World,
    buy_probability,
    catalogue_size,
    make_catalogue,
    session_starts,
    simulate_clicks,
)

CLICKS_FILE = "yoochoose-clicks.dat"
BUYS_FILE = "yoochoose-buys.dat"
EVENTS_FILE = "events.csv"
TRUTH_FILE = "truth.parquet"
EVENTS_HEADER = "cookie_id,ts,event_type,item_id,category,price,quantity"
BLOCK_SESSIONS = 500_000  # sessions simulated and written at once: bounds memory
IDS_PER_DAY = 10_000_000
# The days generate writes: from the first an ingest accepts (ingest.raw_fields.EARLIEST_EVENT; ids stay
# positive) to a week before the end of year 9999, so that every session, up to 200 clicks 25 minutes
# apart, and its buys end within it (timestamps past 9999 have no ISO form, dates no Python date)
FIRST_DAY = dt.date(1990, 1, 1)
LAST_DAY = dt.date(9999, 12, 24)
SESSIONS_PER_COOKIE = 2.2
COOKIE_GAP_MS = 31 * 60_000  # between two sessions of a cookie, end to start
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
_CATALOGUE_STREAM = 0xCA7A
_NO_SESSIONS = (np.zeros(0, np.int64), None, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))


@dataclass(frozen=True)
class GenerateSummary:
    """What one `generate_logs` call wrote; str() is the CLI's one-line summary."""

    sessions: int
    events: int  # clicks (yoochoose) or non-purchase events (events format)
    buys: int  # buy rows or purchase events
    buyer_share: float  # share of sessions that bought
    files: tuple[Path, ...] = field(default=())

    def __str__(self) -> str:
        folders = sorted({str(path.parent) for path in self.files})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} day folders"
        return (
            f"generated {self.sessions:,} sessions, {self.events:,} events, {self.buys:,} buys "
            f"({self.buyer_share:.1%} buying sessions) into {len(self.files)} files in {where}"
        )


def generate_logs(
    out_dir: Path,
    *,
    sessions: int,
    days: int,
    start_date: dt.date,
    seed: int,
    fmt: str = "yoochoose",
    by_day: bool = False,
    world: str = "default",
) -> GenerateSummary:
    """Write `sessions` synthetic sessions starting over `days` UTC days from `start_date`.

    Files go to `out_dir`, or with `by_day` to `out_dir/YYYY-MM-DD/` holding the events whose
    timestamp falls on that day (a session crossing midnight spans two folders; its truth row
    is in the folder of its start). Files are replaced atomically; same arguments, same bytes.
    `world` names the shoppers and buying rule (WORLDS).
    """
    if fmt not in GENERATED:
        raise ClickstreamError(f"unknown generate format {fmt!r}; expected one of {', '.join(GENERATED)}")
    if world not in WORLDS:
        raise ClickstreamError(f"unknown world {world!r}; expected one of {', '.join(WORLDS)}")
    shop = WORLDS[world]
    if sessions < 1 or days < 1 or seed < 0:
        raise ClickstreamError("generate needs sessions >= 1, days >= 1 and seed >= 0")
    if -(-sessions // days) >= IDS_PER_DAY:
        raise ClickstreamError(f"at most {IDS_PER_DAY - 1:,} sessions a day; use more --days")
    if start_date < FIRST_DAY or start_date.toordinal() + days - 1 > LAST_DAY.toordinal():
        raise ClickstreamError(
            f"--start-date {start_date} with --days {days:,} falls outside the days generate writes, {FIRST_DAY} "
            f"to {LAST_DAY} (the last day is the start + days - 1)"
        )
    catalogue = world_catalogue(shop, sessions=sessions, seed=seed)
    writer = _LandingWriter(Path(out_dir), fmt, by_day)
    totals = np.zeros(3, dtype=np.int64)  # events, buys, buying sessions
    try:
        for block in simulate_blocks(catalogue, shop, sessions=sessions, days=days, start_date=start_date, seed=seed):
            totals += _write_block(writer, catalogue, block)
        files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return GenerateSummary(
        sessions=sessions,
        events=int(totals[0]),
        buys=int(totals[1]),
        buyer_share=float(totals[2]) / sessions,
        files=files,
    )


def world_catalogue(shop: World, *, sessions: int, seed: int) -> Catalogue:
    """The catalogue `generate_logs` draws for `sessions` sessions of world `shop` and `seed`."""
    return make_catalogue(
        np.random.default_rng([seed, _CATALOGUE_STREAM]),
        catalogue_size(sessions, shop.items_per_root),
        category_scale=shop.category_scale,
        item_sd=shop.item_sd,
    )


@dataclass(frozen=True)
class SimulatedBlock:
    """Up to BLOCK_SESSIONS sessions as simulated, before they are written: what `generate_logs`
    writes, in memory (benchmarks.ceiling reads the clicks and labels without parsing files)."""

    rng: np.random.Generator  # the block's stream, positioned after the labels: the buys draw from it next
    ids: np.ndarray  # int64 session ids
    starts: np.ndarray  # int64 epoch ms
    clicks: Clicks
    p_buy: np.ndarray  # float64, the true buying probability
    label: np.ndarray  # bool, drawn from p_buy


def simulate_blocks(
    catalogue: Catalogue, shop: World, *, sessions: int, days: int, start_date: dt.date, seed: int
) -> Iterator[SimulatedBlock]:
    """The sessions of `generate_logs` with the same arguments, block by block (bounded memory)."""
    starts, ids = _session_schedule(seed, sessions, days, start_date)
    for block, first in enumerate(range(0, sessions, BLOCK_SESSIONS)):
        rng = np.random.default_rng([seed, start_date.toordinal(), block + 1])
        part = slice(first, first + BLOCK_SESSIONS)
        clicks = simulate_clicks(rng, catalogue, starts[part], shop)
        p_buy = buy_probability(clicks, catalogue, shop)
        label = rng.random(len(ids[part])) < p_buy
        yield SimulatedBlock(rng, ids[part], starts[part], clicks, p_buy, label)


def _session_schedule(seed: int, sessions: int, days: int, start_date: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """Start times (epoch ms, ascending) and date-derived ids of all sessions, spread evenly
    over the days; each day's start times come from its own stream (seed, date)."""
    starts, ids = [], []
    for index in range(days):
        day = start_date + dt.timedelta(days=index)
        n_day = sessions // days + (index < sessions % days)
        epoch_day = (day - dt.date(1970, 1, 1)).days
        starts.append(session_starts(np.random.default_rng([seed, day.toordinal()]), n_day, epoch_day * DAY_MS))
        ids.append(epoch_day * IDS_PER_DAY + 1 + np.arange(n_day))
    return np.concatenate(starts), np.concatenate(ids)


@dataclass(frozen=True)
class _Buys:
    """Bought items, ordered by session then time."""

    session: np.ndarray  # int64 block session index
    item: np.ndarray  # int64 catalogue index
    ts_ms: np.ndarray
    price: np.ndarray  # int64, 0 = unknown
    quantity: np.ndarray  # int64, 0 = unknown


def _write_block(writer: _LandingWriter, catalogue: Catalogue, block: SimulatedBlock) -> np.ndarray:
    rng, ids, clicks = block.rng, block.ids, block.clicks
    buys = _simulate_buys(rng, clicks, catalogue, block.label)
    if writer.fmt == "yoochoose":
        n_events = _write_yoochoose(writer, catalogue, ids, clicks, buys)
        cookies = None
    else:
        n_events, cookies = _write_event_log(writer, rng, catalogue, ids, clicks, buys)
    writer.add_truth(_truth_frame(ids, cookies, block.starts, block.p_buy, block.label), block.starts)
    return np.array([n_events, len(buys.item), int(block.label.sum())], dtype=np.int64)


def _simulate_buys(rng: np.random.Generator, clicks: Clicks, catalogue: Catalogue, label: np.ndarray) -> _Buys:
    """Items bought by the buying sessions: always the last clicked item, each other clicked
    item with 20%; 20 s to 20 min after the last click, then 1-4 s apart."""
    lengths = clicks.lengths
    last = clicks.offsets[1:] - 1
    rows = np.flatnonzero(np.repeat(label, lengths))
    session = np.repeat(np.arange(len(lengths)), lengths)[rows]
    pairs = np.unique(session * catalogue.n_items + clicks.item[rows])  # distinct, by session then item
    session, item = pairs // catalogue.n_items, pairs % catalogue.n_items
    chosen = (item == clicks.item[last[session]]) | (rng.random(len(pairs)) < 0.2)
    session, item = session[chosen], item[chosen]
    delay_ms = np.clip(rng.lognormal(np.log(90.0), 1.0, len(lengths)), 20.0, 1_200.0) * 1000
    elapsed = np.cumsum(rng.integers(1_000, 4_000, len(session)))
    since_first = elapsed - elapsed[np.searchsorted(session, session, side="left")]
    ts_ms = clicks.ts_ms[last[session]] + delay_ms.astype(np.int64)[session] + since_first
    unknown = rng.random(len(session)) < 0.08
    quantity = np.where(unknown, 0, rng.choice([1, 2, 3, 4], size=len(session), p=[0.85, 0.1, 0.03, 0.02]))
    price = np.where(unknown, 0, catalogue.price[item])
    return _Buys(session=session, item=item, ts_ms=ts_ms, price=price, quantity=quantity)


def _write_yoochoose(writer: _LandingWriter, catalogue: Catalogue, ids: np.ndarray, clicks: Clicks, buys: _Buys) -> int:

    session = np.repeat(np.arange(len(ids)), clicks.lengths)
    click_frame = pl.DataFrame(
        {
            "session_id": ids[session],
            "timestamp": _timestamps(clicks.ts_ms),
            "item_id": catalogue.item_id[clicks.item],
            "category": _category_names(catalogue, clicks.item),
        }
    )
    buy_frame = pl.DataFrame(
        {
            "session_id": ids[buys.session],
            "timestamp": _timestamps(buys.ts_ms),
            "item_id": catalogue.item_id[buys.item],
            "price": buys.price,
            "quantity": buys.quantity,
        }
    )
    writer.append(CLICKS_FILE, click_frame, clicks.ts_ms)
    writer.append(BUYS_FILE, buy_frame, buys.ts_ms)
    return len(clicks.item)


def _write_event_log(
    writer: _LandingWriter,
    rng: np.random.Generator,
    catalogue: Catalogue,
    ids: np.ndarray,
    clicks: Clicks,
    buys: _Buys,
) -> tuple[int, np.ndarray]:

    n = len(ids)
    lengths, offsets = clicks.lengths, clicks.offsets
    session = np.repeat(np.arange(n), lengths)
    is_last = np.zeros(len(session), dtype=bool)
    is_last[offsets[1:] - 1] = True
    to_next = np.where(is_last, 20_000, np.diff(clicks.ts_ms, append=0))  # last click: 20 s before any buy
    cart = np.flatnonzero(rng.random(len(session)) < 0.05)
    removed = cart[rng.random(len(cart)) < 0.3]
    kinds = [
        (session, clicks.ts_ms, "view", clicks.item),
        (session[cart], clicks.ts_ms[cart] + to_next[cart] // 4, "add_to_cart", clicks.item[cart]),
        (session[removed], clicks.ts_ms[removed] + to_next[removed] // 2, "remove_from_cart", clicks.item[removed]),
        (buys.session, buys.ts_ms, "purchase", buys.item),
    ]
    ev_session = np.concatenate([k[0] for k in kinds])
    ev_ts = np.concatenate([k[1] for k in kinds])
    ev_item = np.concatenate([k[3] for k in kinds])
    ev_kind = np.concatenate([np.full(len(k[0]), code, dtype=np.int8) for code, k in enumerate(kinds)])
    bought = np.zeros(len(ev_session), dtype=bool)
    bought[len(ev_session) - len(buys.item) :] = True
    price = np.zeros(len(ev_session), dtype=np.int64)
    quantity = np.zeros(len(ev_session), dtype=np.int64)
    price[bought], quantity[bought] = buys.price, buys.quantity

    ends = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(ends, ev_session, ev_ts)
    cookie_of_session = _assign_cookies(rng, clicks.ts_ms[offsets[:-1]], ends)
    cookie_names = _hex_ids(rng.integers(0, 2**63, int(cookie_of_session.max()) + 1, dtype=np.uint64))
    cookie = cookie_names[cookie_of_session]

    order = np.lexsort((ev_kind, ev_session, ev_ts))
    kind_names = pl.Series([k[2] for k in kinds])
    frame = pl.DataFrame(
        {
            "cookie_id": pl.Series(cookie[ev_session[order]]),
            "ts": _timestamps(ev_ts[order]),
            "event_type": kind_names.gather(ev_kind[order]),
            "item_id": catalogue.item_id[ev_item[order]],
            "category": _category_names(catalogue, ev_item[order]),
            "price": pl.Series(price[order]).set(pl.Series(~bought[order]), None),
            "quantity": pl.Series(quantity[order]).set(pl.Series(~bought[order]), None),
        }
    )
    writer.append(EVENTS_FILE, frame, ev_ts[order])
    return len(ev_session) - len(buys.item), cookie


def _assign_cookies(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A cookie index per session: about SESSIONS_PER_COOKIE sessions share a cookie, and a
    session that would start within COOKIE_GAP_MS of an earlier session's end of its cookie
    gets a cookie of its own instead."""
    n = len(starts)
    n_cookies = max(1, round(n / SESSIONS_PER_COOKIE))
    cookie = rng.integers(0, n_cookies, n)
    order = np.lexsort((starts, cookie))
    grouped = cookie[order]
    origin = starts.min()
    span = int(ends.max() - origin) + 1
    # running maximum of end times per cookie: offset each cookie's values above the previous one's
    keyed = np.maximum.accumulate(grouped * span + (ends[order] - origin))
    earlier_end = np.concatenate([[-1], keyed[:-1]]) - grouped * span + origin
    same_cookie = np.concatenate([[False], grouped[1:] == grouped[:-1]])
    clash = same_cookie & (starts[order] - earlier_end < COOKIE_GAP_MS)
    grouped[clash] = n_cookies + np.arange(int(clash.sum()))
    result = np.empty(n, dtype=np.int64)
    result[order] = grouped
    return result


def _hex_ids(values: np.ndarray) -> np.ndarray:
    """uint64 values as 16-digit lowercase hex strings, without a Python loop."""
    return np.frombuffer(binascii.hexlify(values.astype(">u8").tobytes()), dtype="S16").astype(str)


def _timestamps(ts_ms: np.ndarray) -> pl.Series:
    return pl.Series(ts_ms).cast(pl.Datetime("ms", "UTC"))


def _category_names(catalogue: Catalogue, item: np.ndarray) -> pl.Series:
    return pl.Series(catalogue.category_names).gather(catalogue.category[item])


def _truth_frame(
    ids: np.ndarray, cookies: np.ndarray | None, starts_ms: np.ndarray, p_buy: np.ndarray, label: np.ndarray
) -> pl.DataFrame:

    n = len(ids)
    return pl.DataFrame(
        [
            pl.Series("session_id", ids).cast(pl.String),
            pl.Series("cookie_id", cookies, dtype=pl.String)
            if cookies is not None
            else pl.repeat(None, n, dtype=pl.String, eager=True).alias("cookie_id"),
            pl.Series("session_start", starts_ms * 1000).cast(pl.Datetime("us", "UTC")),
            pl.Series("p_buy", p_buy, dtype=pl.Float64),
            pl.Series("label", label, dtype=pl.Boolean),
        ]
    )


class _LandingWriter:
    """Appends CSV rows to temporary files and moves every file into place on commit."""

    def __init__(self, out_dir: Path, fmt: str, by_day: bool) -> None:
        self.out_dir, self.fmt, self.by_day = out_dir, fmt, by_day
        self.names = (CLICKS_FILE, BUYS_FILE) if fmt == "yoochoose" else (EVENTS_FILE,)
        self._handles: dict[Path, tuple[Path, BinaryIO]] = {}
        self._truth: dict[Path, list[pl.DataFrame]] = {}

    def _routes(self, ts_ms: np.ndarray) -> list[tuple[Path, np.ndarray | None]]:
        """(folder, row mask) pairs: one folder, or with by_day one per UTC day of `ts_ms`."""
        if not self.by_day:
            return [(self.out_dir, None)]
        epoch_day = ts_ms // DAY_MS
        return [
            (self.out_dir / (dt.date(1970, 1, 1) + dt.timedelta(days=int(value))).isoformat(), epoch_day == value)
            for value in np.unique(epoch_day)
        ]

    def _handle(self, path: Path) -> BinaryIO:
        if path not in self._handles:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
            handle = open(tmp, "wb")  # noqa: SIM115 - closed in commit/abort
            if path.name == EVENTS_FILE:
                handle.write(f"{EVENTS_HEADER}\n".encode())
            self._handles[path] = (tmp, handle)
            for day_folder_file in self.names:  # every folder gets every file, maybe empty
                self._handle(path.with_name(day_folder_file))
            self._truth.setdefault(path.parent, [])
        return self._handles[path][1]

    def append(self, name: str, frame: pl.DataFrame, ts_ms: np.ndarray) -> None:
        """Append CSV rows, routed by the UTC day of `ts_ms` when writing by day."""
        for folder, mask in self._routes(ts_ms):
            rows = frame if mask is None else frame.filter(mask)
            rows.write_csv(self._handle(folder / name), include_header=False, datetime_format=TS_FORMAT)

    def add_truth(self, frame: pl.DataFrame, starts_ms: np.ndarray) -> None:
        """Keep truth rows for commit, routed by the UTC day of the session start."""
        for folder, mask in self._routes(starts_ms):
            self._handle(folder / self.names[0])
            self._truth[folder].append(frame if mask is None else frame.filter(mask))

    def commit(self) -> tuple[Path, ...]:
        """Close and move every file into place; returns the final paths, sorted."""
        lake = Lake(self.out_dir)
        written = []
        for folder, frames in self._truth.items():
            truth = pl.concat(frames) if frames else _truth_frame(*_NO_SESSIONS)
            buffer = io.BytesIO()
            truth.write_parquet(buffer, statistics=True)
            written.append(Path(lake.write_bytes(str(folder / TRUTH_FILE), buffer.getvalue())))
        for path, (tmp, handle) in self._handles.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, path)
            written.append(path)
        self._handles.clear()
        return tuple(sorted(written))

    def abort(self) -> None:
        """Drop every temporary file."""
        for tmp, handle in self._handles.values():
            handle.close()
            tmp.unlink(missing_ok=True)
        self._handles.clear()
