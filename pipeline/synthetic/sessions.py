"""The shoppers behind `clickstream generate`: a product catalogue, simulated click
sessions and the planted buying rule, all as flat numpy arrays (no per-session objects).

Everything here is a pure function of a `numpy.random.Generator`, so one seed gives one
dataset. A `World` fixes the shoppers' habits (session lengths, catalogue size, how much an
item's appeal differs from its category's) and the buying rule; WORLDS names them and the
rules are documented in pipeline/synthetic/generate.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_CLICKS = 200  # sessions are capped here, as the sequence builder keeps at most 200 events
DWELL_MEDIAN_S = 40.0  # median seconds between two clicks (lognormal)
DWELL_SIGMA = 1.1
MAX_GAP_S = 25 * 60  # a gap inside a session stays below the 30-minute sessionization cut

# How the item of click t >= 1 is chosen (cumulative bands of one uniform draw).
P_RECLICK = 0.12  # the same item as click t-1 (reload, zoom, second picture)
P_RETURN = 0.15  # an item from clicks 0..t-2: back to something seen before (t >= 2)
P_SAME_CATEGORY = 0.30  # a new item of the previous item's category
# the rest: a fresh item by overall popularity

# The buying rule, in logit units (see pipeline/synthetic/generate.py for the prose).
BASE_LOGIT = -4.32
W_LENGTH = 0.55  # * ln(clicks)
W_INTEREST = 3.0  # * item propensities averaged by an update that weighs each click by its dwell
W_RETURN = 1.6  # the last click returns to an item seen before another item
W_FOCUS = 1.3  # the last three clicks share one named category (not "0")
W_LINGER = 0.3  # * clip(ln(gap before the last click / 40 s), -2, 2)
LAST_LOOK_S = 10.0  # the dwell the interest update assumes for the last click

_HOUR_WEIGHTS = np.array(
    [2.0, 1.2, 0.8, 0.6, 0.6, 0.8, 1.5, 2.5, 3.5, 4.0, 4.2, 4.3,
     4.5, 4.3, 4.2, 4.3, 4.5, 4.8, 5.5, 6.3, 6.8, 6.5, 5.0, 3.3]
)  # relative session starts per UTC hour
DAY_MS = 86_400_000
POPULARITY_TABLE = 1 << 20


@dataclass(frozen=True)
class Catalogue:
    """Items by popularity rank (index 0 is the most clicked), each with fixed attributes."""

    item_id: np.ndarray  # int64, 9-digit YOOCHOOSE-like ids
    category: np.ndarray  # int32 index into category_names
    category_names: np.ndarray  # str: "0", "1".."12", "S", brand ids
    price: np.ndarray  # int64, always > 0 (0 = unknown is decided per buy)
    propensity: np.ndarray  # float64, logit units: some items sell better
    popularity_cdf: np.ndarray  # float64, Zipf click share, cumulative, last value exactly 1
    popularity_table: np.ndarray  # int64 [POPULARITY_TABLE]: first item with cdf > k / POPULARITY_TABLE
    by_category: np.ndarray  # item indices sorted by (category, rank)
    by_category_cdf: np.ndarray  # cumulative popularity along by_category
    category_bounds: np.ndarray  # int64 [n_categories + 1]: category c is by_category[b[c]:b[c+1]]

    @property
    def n_items(self) -> int:
        return len(self.item_id)


def catalogue_size(sessions: int, items_per_root: float = 16.0) -> int:
    """Items in the catalogue: about `items_per_root` * sqrt(sessions), 200 to 50,000 (YOOCHOOSE: 52,739)."""
    return int(np.clip(round(items_per_root * np.sqrt(sessions)), 200, 50_000))


def make_catalogue(
    rng: np.random.Generator, n_items: int, *, category_scale: float = 1.0, item_sd: float = 0.4
) -> Catalogue:
    """A catalogue of `n_items` with Zipf popularity, fixed categories, prices and buy propensities:
    a category effect times `category_scale` plus an item's own N(0, `item_sd`)."""
    item_id = 214_500_000 + np.sort(rng.choice(430_000_000, size=n_items, replace=False)).astype(np.int64)
    item_id = rng.permutation(item_id)  # popularity rank is not id order
    n_brands = int(np.clip(n_items // 100, 5, 500))
    brands = np.unique(rng.integers(10_000_000, 10_000_000_000, size=n_brands)).astype(str)
    names = np.concatenate([np.array(["0"] + [str(i) for i in range(1, 13)] + ["S"]), brands])
    numbered = 0.30 * _normalised(1.0 / np.arange(1, 13))
    branded = 0.07 * _normalised(1.0 / np.arange(1, len(brands) + 1))
    category_share = np.concatenate([[0.55], numbered, [0.08], branded])
    category = rng.choice(len(names), size=n_items, p=category_share).astype(np.int32)

    weight = 1.0 / (np.arange(n_items) + 10.0) ** 1.05
    popularity_cdf = np.cumsum(_normalised(weight))
    popularity_cdf[-1] = 1.0
    table_edges = np.arange(POPULARITY_TABLE) / POPULARITY_TABLE
    popularity_table = np.searchsorted(popularity_cdf, table_edges, side="right")
    by_category = np.lexsort((np.arange(n_items), category))
    by_category_cdf = np.cumsum(_normalised(weight[by_category]))
    category_bounds = np.searchsorted(category[by_category], np.arange(len(names) + 1))
    price = np.maximum(100, np.round(rng.lognormal(np.log(2_000), 1.0, n_items))).astype(np.int64)
    # what sells is mostly a matter of category (learnable from few buys), partly of the item
    category_effect = np.concatenate([[0.0], np.linspace(-0.8, 0.8, 12), [0.6], rng.normal(0.0, 0.6, len(brands))])
    propensity = category_scale * category_effect[category] + rng.normal(0.0, item_sd, n_items)
    propensity -= np.dot(_normalised(weight), propensity)  # a click's expected propensity is 0
    return Catalogue(
        item_id=item_id,
        category=category,
        category_names=names,
        price=price,
        propensity=propensity,
        popularity_cdf=popularity_cdf,
        popularity_table=popularity_table,
        by_category=by_category,
        by_category_cdf=by_category_cdf,
        category_bounds=category_bounds,
    )


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def session_starts(rng: np.random.Generator, n: int, day_start_ms: int) -> np.ndarray:
    """`n` session start times (epoch ms, int64, ascending) on one UTC day, quiet at night,
    busiest in the evening."""
    hour_cdf = np.cumsum(_normalised(_HOUR_WEIGHTS))
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(n), side="right"), 23)
    within = (rng.random(n) * 3_600_000).astype(np.int64)
    return np.sort(day_start_ms + hour * 3_600_000 + within)


def session_lengths(
    rng: np.random.Generator, n: int, *, mean_short: float = 2.9, tail_share: float = 0.15, tail_exponent: float = 1.2
) -> np.ndarray:
    """Clicks per session (int64, 1..200): mostly short (geometric, mean `mean_short`) with a
    power-law tail (`tail_share`, Pareto `tail_exponent`); by default mean about 3.6, 29% single clicks."""
    short = rng.geometric(1 / mean_short, n)
    tail = np.floor(2.0 * rng.random(n) ** (-1 / tail_exponent)).astype(np.int64)
    lengths = np.where(rng.random(n) < 1.0 - tail_share, short, tail)
    return np.minimum(lengths, MAX_CLICKS).astype(np.int64)


@dataclass(frozen=True)
class Clicks:
    """Sessions as flat clicks: session i's clicks are rows offsets[i]:offsets[i+1], in time order."""

    offsets: np.ndarray  # int64 [n_sessions + 1]
    item: np.ndarray  # int64 [n_clicks], catalogue index
    ts_ms: np.ndarray  # int64 [n_clicks], epoch milliseconds, strictly increasing within a session

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def simulate_clicks(
    rng: np.random.Generator, catalogue: Catalogue, starts_ms: np.ndarray, world: World | None = None
) -> Clicks:
    """Click sessions starting at `starts_ms`: item choices with re-clicks, returns to earlier
    items and category browsing; lognormal gaps (1 s to 25 min) between clicks; session
    lengths as `world` draws them (default: DEFAULT_WORLD)."""
    n = len(starts_ms)
    world = world or DEFAULT_WORLD
    lengths = session_lengths(
        rng, n, mean_short=world.mean_short, tail_share=world.tail_share, tail_exponent=world.tail_exponent
    )
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_clicks = int(offsets[-1])
    choice, pick, popular = rng.random(n_clicks), rng.random(n_clicks), rng.random(n_clicks)
    item = popular_items(catalogue, popular)

    # Position by position (at most 200 steps), every session at once: click t depends on t-1.
    longest_first = np.argsort(-lengths, kind="stable")
    active = np.searchsorted(-lengths[longest_first], -np.arange(int(lengths.max())), side="left")
    for t in range(1, len(active)):
        rows = offsets[longest_first[: active[t]]] + t
        previous = item[rows - 1]
        band = choice[rows]
        reclick = band < P_RECLICK
        back = (band >= P_RECLICK) & (band < P_RECLICK + P_RETURN) & (t >= 2)
        same = (band >= P_RECLICK + P_RETURN) & (band < P_RECLICK + P_RETURN + P_SAME_CATEGORY)
        item[rows[reclick]] = previous[reclick]
        earlier = rows[back] - t + (pick[rows[back]] * (t - 1)).astype(np.int64)
        item[rows[back]] = item[earlier]
        item[rows[same]] = _same_category(catalogue, previous[same], pick[rows[same]])

    gap_s = np.clip(rng.lognormal(np.log(DWELL_MEDIAN_S), DWELL_SIGMA, n_clicks), 1.0, MAX_GAP_S)
    gap_ms = (gap_s * 1000).astype(np.int64)
    gap_ms[offsets[:-1]] = 0
    elapsed = np.cumsum(gap_ms)
    session = np.repeat(np.arange(n), lengths)
    ts_ms = starts_ms[session] + elapsed - elapsed[offsets[:-1]][session]
    return Clicks(offsets=offsets, item=item.astype(np.int64), ts_ms=ts_ms)


def popular_items(catalogue: Catalogue, u: np.ndarray) -> np.ndarray:
    """Items by overall popularity for uniforms `u` in [0, 1): the inverse of the popularity
    CDF, exact, through a lookup table (much faster than a binary search per draw)."""
    item = catalogue.popularity_table[(u * POPULARITY_TABLE).astype(np.int64)]
    behind = np.flatnonzero(catalogue.popularity_cdf[item] <= u)
    while len(behind):  # a table bucket holds a few rare items: step to the right one
        item[behind] += 1
        behind = behind[catalogue.popularity_cdf[item[behind]] <= u[behind]]
    return item


def _same_category(catalogue: Catalogue, previous: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A popularity-weighted item from the category of each `previous` item."""
    category = catalogue.category[previous]
    lo_pos, hi_pos = catalogue.category_bounds[category], catalogue.category_bounds[category + 1]
    cdf = catalogue.by_category_cdf
    lo = np.where(lo_pos > 0, cdf[np.maximum(lo_pos - 1, 0)], 0.0)
    hi = cdf[hi_pos - 1]
    pos = np.searchsorted(cdf, lo + u * (hi - lo), side="right")
    return catalogue.by_category[np.clip(pos, lo_pos, hi_pos - 1)]


def _default_logit(clicks: Clicks, catalogue: Catalogue) -> np.ndarray:
    """World "default": dwell-weighted interest, a return to an earlier item, a focused end,
    lingering before the last click; one logit per session (float64) from its clicks in order.

    Depends on the order of clicks, not only on counts: reversing or shuffling a session
    changes it whenever its last clicks change.
    """
    item = clicks.item
    lengths, n, session, last, from_end = _layout(clicks)

    pull = _interest_pull(clicks, session, last)
    interest = np.bincount(session, weights=pull * catalogue.propensity[item], minlength=n)

    seen_before = (item == item[last][session]) & (from_end >= 2)
    returned = np.bincount(session, weights=seen_before, minlength=n) > 0

    category = catalogue.category[item]
    has3 = lengths >= 3
    c1, c2, c3 = category[last], category[np.maximum(last - 1, 0)], category[np.maximum(last - 2, 0)]
    focused = has3 & (c1 == c2) & (c2 == c3) & (catalogue.category_names[c1] != "0")

    linger = _linger(clicks, lengths, last)

    return (
        BASE_LOGIT
        + W_LENGTH * np.log(lengths)
        + W_INTEREST * interest
        + W_RETURN * returned
        + W_FOCUS * focused
        + W_LINGER * linger
    )


def _interest_pull(clicks: Clicks, session: np.ndarray, last: np.ndarray) -> np.ndarray:
    """float64 per click: its weight in the default world's interest, the session's last interest
    (`session`, `last`: _layout's session of each click and last click of each session).

    interest_k = (1 - a_k) * interest_{k-1} + a_k * propensity(i_k), a_k = dwell_k / (dwell_k + 40 s):
    a long look at an item pulls the interest towards what that item sells like.
    """
    dwell_s = _dwell_s(clicks, last)
    keep = np.cumsum(np.log(DWELL_MEDIAN_S / (dwell_s + DWELL_MEDIAN_S)))
    return dwell_s / (dwell_s + DWELL_MEDIAN_S) * np.exp(keep[last][session] - keep)


def _layout(clicks: Clicks) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, sessions, session of each click, last click of each session, clicks after each click)."""
    lengths = np.diff(clicks.offsets)
    session = np.repeat(np.arange(len(lengths)), lengths)
    last = clicks.offsets[1:] - 1
    return lengths, len(lengths), session, last, last[session] - np.arange(len(clicks.item))


def _dwell_s(clicks: Clicks, last: np.ndarray) -> np.ndarray:
    """Seconds from each click to the next; LAST_LOOK_S for a session's last (unknown: a short look)."""
    dwell_s = np.diff(clicks.ts_ms, append=0) / 1000.0
    dwell_s[last] = LAST_LOOK_S
    return dwell_s


def _linger(clicks: Clicks, lengths: np.ndarray, last: np.ndarray) -> np.ndarray:
    """clip(ln(gap before the last click / 40 s), -2, 2); 0 for a single click."""
    last_gap_s = (clicks.ts_ms[last] - clicks.ts_ms[np.maximum(last - 1, 0)]) / 1000.0
    return np.where(lengths >= 2, np.clip(np.log(np.maximum(last_gap_s, 1.0) / DWELL_MEDIAN_S), -2, 2), 0.0)


def _seen_earlier(item: np.ndarray, session: np.ndarray) -> np.ndarray:
    """bool per click: its item occurred earlier in its session."""
    order = np.lexsort((np.arange(len(item)), item, session))
    repeat = np.zeros(len(item), dtype=bool)
    repeat[order[1:]] = (session[order[1:]] == session[order[:-1]]) & (item[order[1:]] == item[order[:-1]])
    return repeat


def _counts_logit(clicks: Clicks, catalogue: Catalogue) -> np.ndarray:
    """World "counts": how much and how long the shopper looked, in any order."""
    lengths, n, session, last, _ = _layout(clicks)
    dwell_s = _dwell_s(clicks, last)
    duration_s = (clicks.ts_ms[last] - clicks.ts_ms[clicks.offsets[:-1]]) / 1000.0
    distinct = lengths - np.bincount(session, weights=_seen_earlier(clicks.item, session), minlength=n)
    mean_log_dwell = np.bincount(session, weights=np.log(dwell_s / DWELL_MEDIAN_S), minlength=n) / lengths
    mean_propensity = np.bincount(session, weights=catalogue.propensity[clicks.item], minlength=n) / lengths
    return (
        COUNTS_BASE_LOGIT
        + 0.9 * np.log(lengths)
        - 1.2 * distinct / lengths
        + 0.45 * np.clip(np.log1p(duration_s / 120.0), 0, 4)
        + 0.35 * np.clip(mean_log_dwell, -2, 2)
        + COUNTS_W_PROPENSITY * mean_propensity
    )


def _appeal_logit(clicks: Clicks, catalogue: Catalogue) -> np.ndarray:
    """World "appeal": the appeal of the item the session ends on and of the best item seen."""
    lengths, n, session, last, _ = _layout(clicks)
    appeal = catalogue.propensity[clicks.item]
    best = np.maximum.reduceat(appeal, clicks.offsets[:-1])
    last_item_views = np.bincount(session, weights=clicks.item == clicks.item[last][session], minlength=n)
    return (
        APPEAL_BASE_LOGIT
        + 0.3 * np.log(lengths)
        + APPEAL_W_LAST * appeal[last]
        + APPEAL_W_BEST * best
        + 0.8 * (last_item_views >= 2)
        + 0.2 * _linger(clicks, lengths, last)
    )


def _order_logit(clicks: Clicks, catalogue: Catalogue) -> np.ndarray:
    """World "order": the path through categories and back to earlier items, recent steps most."""
    lengths, n, session, last, from_end = _layout(clicks)
    category = catalogue.category[clicks.item]
    position = np.arange(len(category)) - clicks.offsets[:-1][session]
    final = category[last][session]
    same = category == final
    # the final category was left for another one and came back to: ... c ... x ... c (end)
    last_other = np.maximum.reduceat(np.where(same, -1, position), clicks.offsets[:-1])
    first_same = np.minimum.reduceat(np.where(same, position, MAX_CLICKS), clicks.offsets[:-1])
    came_back = first_same < last_other
    wandered_off = (lengths >= 2) & (first_same == lengths - 1)  # ends on a category not seen before
    previous_item = np.concatenate([[-1], clicks.item[:-1]])
    returned = _seen_earlier(clicks.item, session) & (clicks.item != previous_item)  # not a reload
    recent_returns = np.bincount(session, weights=returned * 0.6**from_end, minlength=n)
    first_is_last = (lengths >= 3) & (category[clicks.offsets[:-1]] == category[last])
    return (
        ORDER_BASE_LOGIT
        + 0.25 * np.log(lengths)
        + 1.5 * came_back
        + 1.4 * recent_returns
        - 1.0 * wandered_off
        + 0.6 * first_is_last
    )


@dataclass(frozen=True)
class PropensityUse:
    """Where a buying rule reads the item propensities: its logit is a part that does not, plus
    the sum over clicks of `click_weight` * the propensity of the click's item, plus `best_weight`
    * the highest propensity of the session. What a model must estimate per item, and how much
    each click's estimate counts (benchmarks.ceiling fits the propensities through it)."""

    click_weight: np.ndarray  # float64 [n_clicks]
    best_weight: float = 0.0


def _default_use(clicks: Clicks) -> PropensityUse:
    _, _, session, last, _ = _layout(clicks)
    return PropensityUse(W_INTEREST * _interest_pull(clicks, session, last))


def _counts_use(clicks: Clicks) -> PropensityUse:
    lengths = clicks.lengths
    return PropensityUse(np.repeat(COUNTS_W_PROPENSITY / lengths, lengths))


def _appeal_use(clicks: Clicks) -> PropensityUse:
    weight = np.zeros(len(clicks.item))
    weight[clicks.offsets[1:] - 1] = APPEAL_W_LAST
    return PropensityUse(weight, APPEAL_W_BEST)


def _order_use(clicks: Clicks) -> PropensityUse:
    return PropensityUse(np.zeros(len(clicks.item)))


@dataclass(frozen=True)
class World:
    """One kind of shop: its shoppers' session lengths, its catalogue and its buying rule."""

    name: str
    rule: Callable[[Clicks, Catalogue], np.ndarray]  # one buy logit per session
    propensity_use: Callable[[Clicks], PropensityUse]  # where `rule` reads the item propensities
    mean_short: float = 2.9  # session_lengths
    tail_share: float = 0.15
    tail_exponent: float = 1.2
    items_per_root: float = 16.0  # catalogue_size
    category_scale: float = 1.0  # make_catalogue
    item_sd: float = 0.4


COUNTS_BASE_LOGIT = -3.97
COUNTS_W_PROPENSITY = 0.8  # * the mean propensity of the session's clicks
APPEAL_BASE_LOGIT = -4.35
APPEAL_W_LAST = 1.3  # * the propensity of the item the session ends on
APPEAL_W_BEST = 0.5  # * the highest propensity of the session
ORDER_BASE_LOGIT = -4.4
DEFAULT_WORLD = World("default", _default_logit, _default_use)
WORLDS: dict[str, World] = {
    world.name: world
    for world in (
        DEFAULT_WORLD,
        World(
            "counts", _counts_logit, _counts_use, mean_short=4.5, tail_share=0.2, tail_exponent=1.1, items_per_root=8.0
        ),
        World(
            "appeal",
            _appeal_logit,
            _appeal_use,
            mean_short=2.2,
            tail_share=0.1,
            tail_exponent=1.4,
            items_per_root=24.0,
            category_scale=0.4,
            item_sd=0.9,
        ),
        World(
            "order", _order_logit, _order_use, mean_short=3.5, tail_share=0.2, tail_exponent=1.0, items_per_root=12.0
        ),
    )
}


def buy_logit(clicks: Clicks, catalogue: Catalogue, world: World | None = None) -> np.ndarray:
    """The planted buying rule of `world` (default: DEFAULT_WORLD): one logit per session (float64)."""
    return (world or DEFAULT_WORLD).rule(clicks, catalogue)


def buy_probability(clicks: Clicks, catalogue: Catalogue, world: World | None = None) -> np.ndarray:
    """The true probability (float64 in (0, 1)) that each session ends in a purchase."""
    return 1.0 / (1.0 + np.exp(-buy_logit(clicks, catalogue, world)))
