"""The synthetic log generator: exact formats, YOOCHOOSE-like statistics, the by-day
landing layout, recoverable cookie sessions and a real, order-dependent buying signal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.synthetic import generate
from clickstream.pipeline.synthetic.generate import (
    BUYS_FILE,
    CLICKS_FILE,
    EVENTS_FILE,
    EVENTS_HEADER,
    TRUTH_FILE,
    generate_logs,
)
from clickstream.pipeline.synthetic.sessions import (
    MAX_CLICKS,
    WORLDS,
    Clicks,
    buy_probability,
    make_catalogue,
    simulate_clicks,
)

START = dt.date(2014, 4, 1)
TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"
CATEGORY = r"(0|[1-9]|1[0-2]|S|\d{8,10})"
CLICK_LINE = re.compile(rf"^\d+,{TS},\d+,{CATEGORY}$")
BUY_LINE = re.compile(rf"^\d+,{TS},\d+,\d+,\d+$")
EVENT_LINE = re.compile(
    rf"^[0-9a-f]{{16}},{TS},((view|add_to_cart|remove_from_cart),\d+,{CATEGORY},,"
    rf"|purchase,\d+,{CATEGORY},\d+,\d+)$"
)
CLICK_COLUMNS = {"session_id": pl.Int64, "timestamp": pl.String, "item_id": pl.Int64, "category": pl.String}
BUY_COLUMNS = {
    "session_id": pl.Int64,
    "timestamp": pl.String,
    "item_id": pl.Int64,
    "price": pl.Int64,
    "quantity": pl.Int64,
}


def read_headerless(path: Path, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    frame = pl.read_csv(path, has_header=False, new_columns=list(columns), schema_overrides=columns)
    return frame.with_columns(pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_zone="UTC"))


def read_events(path: Path) -> pl.DataFrame:
    types = {"cookie_id": pl.String, "category": pl.String, "price": pl.Int64, "quantity": pl.Int64}
    frame = pl.read_csv(path, schema_overrides=types)
    return frame.with_columns(pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_unit="us", time_zone="UTC"))


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50,000 YOOCHOOSE-format sessions over 3 days, one folder."""
    out = tmp_path_factory.mktemp("large")
    generate_logs(out, sessions=50_000, days=3, start_date=START, seed=1)
    return out


@pytest.fixture(scope="module")
def event_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 event-log sessions over 3 days in the by-day landing layout."""
    out = tmp_path_factory.mktemp("events")
    generate_logs(out, sessions=6_000, days=3, start_date=START, seed=2, fmt="events", by_day=True)
    return out


def test_given_the_same_seed_when_generating_twice_then_files_are_byte_identical(tmp_path: Path) -> None:
    for fmt in ("yoochoose", "events"):
        first = generate_logs(tmp_path / f"a-{fmt}", sessions=800, days=2, start_date=START, seed=5, fmt=fmt)
        second = generate_logs(tmp_path / f"b-{fmt}", sessions=800, days=2, start_date=START, seed=5, fmt=fmt)
        assert [p.name for p in first.files] == [p.name for p in second.files]
        for a, b in zip(first.files, second.files, strict=True):
            assert a.read_bytes() == b.read_bytes(), a.name
    other = generate_logs(tmp_path / "c", sessions=800, days=2, start_date=START, seed=6)
    assert (tmp_path / "c" / CLICKS_FILE).read_bytes() != (tmp_path / "a-yoochoose" / CLICKS_FILE).read_bytes()
    assert other.sessions == 800


def test_given_yoochoose_format_then_every_line_matches_the_contract(large: Path) -> None:
    clicks = (large / CLICKS_FILE).read_text().splitlines()
    buys = (large / BUYS_FILE).read_text().splitlines()
    assert all(CLICK_LINE.match(line) for line in clicks)
    assert all(BUY_LINE.match(line) for line in buys)
    categories = pl.Series("category", [line.rsplit(",", 1)[1] for line in clicks]).value_counts(sort=True)
    assert categories["category"][0] == "0"  # unknown is the most common, as in the real data
    assert {"S", "1", "12"} <= set(categories["category"])
    assert categories.filter(pl.col("category").str.len_chars() >= 8).height > 0  # brand ids
    prices = read_headerless(large / BUYS_FILE, BUY_COLUMNS)
    unknown = (prices["price"] == 0).mean()
    assert 0.02 < unknown < 0.2  # price/quantity sometimes 0 (unknown), mostly known


def test_given_50k_sessions_then_statistics_look_like_yoochoose(large: Path) -> None:
    clicks = read_headerless(large / CLICKS_FILE, CLICK_COLUMNS)
    truth = pl.read_parquet(large / TRUTH_FILE)
    lengths = clicks.group_by("session_id").len()["len"]
    assert truth.height == 50_000 == lengths.len()
    assert 3.4 < lengths.mean() < 3.8
    assert lengths.max() <= MAX_CLICKS and lengths.quantile(0.999) >= 40  # long tail, capped
    assert 0.048 < truth["label"].mean() < 0.062
    items = clicks["item_id"].value_counts(sort=True)["count"].to_numpy()
    assert items[0] > 20 * np.median(items)  # Zipf: a few items take most clicks
    per_item = clicks.group_by("item_id").agg(pl.col("category").n_unique())
    assert per_item["category"].max() == 1  # one fixed category per item
    hours = clicks.group_by("session_id").agg(pl.col("timestamp").min().dt.hour())["timestamp"]
    assert (hours == 20).sum() > 3 * (hours == 4).sum()  # evening peak, quiet night


def test_given_buying_sessions_then_buys_follow_their_clicks_and_are_clicked_items(large: Path) -> None:
    clicks = read_headerless(large / CLICKS_FILE, CLICK_COLUMNS)
    buys = read_headerless(large / BUYS_FILE, BUY_COLUMNS)
    last_click = clicks.group_by("session_id").agg(last=pl.col("timestamp").max())
    joined = buys.join(last_click, on="session_id", how="left")
    assert joined["last"].null_count() == 0
    assert (joined["timestamp"] > joined["last"]).all()
    clicked = clicks.select("session_id", "item_id").unique()
    assert buys.join(clicked, on=["session_id", "item_id"], how="anti").height == 0
    truth = pl.read_parquet(large / TRUTH_FILE)
    buyers = set(buys["session_id"].cast(pl.String))
    assert buyers == set(truth.filter("label")["session_id"])


def test_given_the_truth_then_p_buy_separates_buyers_from_the_rest(large: Path) -> None:
    truth = pl.read_parquet(large / TRUTH_FILE)
    assert truth["session_id"].n_unique() == truth.height
    assert truth["p_buy"].is_between(0, 1).all()
    assert roc_auc_score(truth["label"].to_numpy(), truth["p_buy"].to_numpy()) > 0.75


def test_given_by_day_then_every_event_is_in_its_days_folder(event_days: Path) -> None:
    folders = sorted(p for p in event_days.iterdir() if p.is_dir())
    assert [p.name for p in folders][:3] == ["2014-04-01", "2014-04-02", "2014-04-03"]
    truth_rows = 0
    for folder in folders:
        day = dt.date.fromisoformat(folder.name)
        events = read_events(folder / EVENTS_FILE)
        assert (events["ts"].dt.date() == day).all()
        truth = pl.read_parquet(folder / TRUTH_FILE)
        assert (truth["session_start"].dt.date() == day).all()
        truth_rows += truth.height
    assert truth_rows == 6_000


def test_given_an_event_log_then_30_minute_gaps_recover_exactly_the_true_sessions(event_days: Path) -> None:
    events = pl.concat([read_events(f) for f in sorted(event_days.glob("*/" + EVENTS_FILE))])
    lines = [line for f in sorted(event_days.glob("*/" + EVENTS_FILE)) for line in f.read_text().splitlines()]
    assert all(line == EVENTS_HEADER or EVENT_LINE.match(line) for line in lines)
    sessions = (
        events.sort("cookie_id", "ts")
        .with_columns(
            new=(pl.col("ts").diff().over("cookie_id") > pl.duration(minutes=30)).fill_null(True),
        )
        .with_columns(number=pl.col("new").cum_sum().over("cookie_id"))
        .group_by("cookie_id", "number")
        .agg(session_start=pl.col("ts").min(), label=(pl.col("event_type") == "purchase").any())
    )
    truth = pl.concat([pl.read_parquet(f) for f in event_days.glob("*/" + TRUTH_FILE)])
    assert sessions.height == truth.height
    matched = truth.join(sessions, on=["cookie_id", "session_start"], how="inner")
    assert matched.height == truth.height
    assert (matched["label"] == matched["label_right"]).all()
    assert truth.group_by("cookie_id").len()["len"].max() >= 2  # several sessions per cookie


def _session(items: list[int], gaps_s: list[float]) -> Clicks:
    ts = np.concatenate([[0], np.cumsum(np.array(gaps_s) * 1000)]).astype(np.int64)
    return Clicks(offsets=np.array([0, len(items)]), item=np.array(items), ts_ms=ts)


def _neutral_catalogue() -> object:
    """A catalogue whose items all have propensity 0 and category "0" except item 2."""
    catalogue = make_catalogue(np.random.default_rng(0), 200)
    category = np.zeros(200, dtype=np.int32)
    category[2] = int(np.flatnonzero(catalogue.category_names == "S")[0])
    return dataclasses.replace(catalogue, propensity=np.zeros(200), category=category)


def test_given_the_same_clicks_in_another_order_then_p_buy_changes() -> None:
    catalogue = _neutral_catalogue()
    back_to_first = buy_probability(_session([0, 1, 0], [40, 40]), catalogue)
    same_counts = buy_probability(_session([0, 0, 1], [40, 40]), catalogue)
    assert back_to_first[0] > 2 * same_counts[0]  # returning to an earlier item signals intent
    lingered = buy_probability(_session([0, 1, 3], [5, 300]), catalogue)
    hurried = buy_probability(_session([0, 1, 3], [300, 5]), catalogue)
    assert lingered[0] > 1.5 * hurried[0]  # same total time, long look before the last click
    focused = buy_probability(_session([0, 1, 2, 2, 2], [40] * 4), catalogue)
    unfocused = buy_probability(_session([2, 2, 0, 2, 1], [40] * 4), catalogue)
    assert focused[0] > 1.5 * unfocused[0]  # the end concentrates on one named category


def test_given_the_same_dwell_times_on_other_items_then_p_buy_changes() -> None:
    catalogue = _neutral_catalogue()
    catalogue = dataclasses.replace(catalogue, propensity=np.where(np.arange(200) == 5, 2.0, 0.0))
    long_look_at_good_item = buy_probability(_session([5, 6, 7, 8], [300, 5, 40]), catalogue)
    long_look_elsewhere = buy_probability(_session([5, 6, 7, 8], [5, 300, 40]), catalogue)
    assert long_look_at_good_item[0] > 3 * long_look_elsewhere[0]


def test_given_real_sessions_when_clicks_are_reversed_then_many_p_buy_change(large: Path) -> None:
    catalogue = make_catalogue(np.random.default_rng(3), 2_000)
    rng = np.random.default_rng(4)
    clicks = simulate_clicks(rng, catalogue, np.zeros(5_000, dtype=np.int64))
    session = np.repeat(np.arange(5_000), clicks.lengths)
    reversed_rows = np.lexsort((-np.arange(len(session)), session))
    flipped = Clicks(clicks.offsets, clicks.item[reversed_rows], clicks.ts_ms)
    changed = ~np.isclose(buy_probability(clicks, catalogue), buy_probability(flipped, catalogue))
    multi = clicks.lengths >= 3
    assert changed[multi].mean() > 0.5
    assert not changed[clicks.lengths == 1].any()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sessions=st.integers(1, 300),
    days=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    fmt=st.sampled_from(["yoochoose", "events"]),
)
def test_given_any_small_run_then_truth_has_one_row_per_session_with_its_events(
    tmp_path: Path, sessions: int, days: int, seed: int, fmt: str
) -> None:
    out = tmp_path / f"{sessions}-{days}-{seed}-{fmt}"
    summary = generate_logs(out, sessions=sessions, days=days, start_date=START, seed=seed, fmt=fmt)
    truth = pl.read_parquet(out / TRUTH_FILE)
    assert truth.height == sessions == summary.sessions
    assert truth["session_id"].n_unique() == sessions
    assert summary.buyer_share == pytest.approx(truth["label"].mean())
    if fmt == "yoochoose":
        clicks = read_headerless(out / CLICKS_FILE, CLICK_COLUMNS)
        assert set(clicks["session_id"].cast(pl.String)) == set(truth["session_id"])
        assert clicks.height == summary.events
    else:
        events = read_events(out / EVENTS_FILE)
        assert set(events["cookie_id"]) == set(truth["cookie_id"])
        assert (events["event_type"] == "purchase").sum() == summary.buys
    first_day = dt.datetime(2014, 4, 1, tzinfo=dt.UTC)
    assert truth["session_start"].min() >= first_day
    assert truth["session_start"].max() < first_day + dt.timedelta(days=days)


def test_given_consecutive_days_generated_separately_then_session_ids_do_not_collide(tmp_path: Path) -> None:
    ids = []
    for offset in range(2):
        out = tmp_path / str(offset)
        generate_logs(out, sessions=200, days=1, start_date=START + dt.timedelta(days=offset), seed=0)
        ids.append(set(pl.read_parquet(out / TRUTH_FILE)["session_id"]))
    assert not ids[0] & ids[1]


def test_given_a_summary_then_it_prints_one_line(tmp_path: Path) -> None:
    summary = generate_logs(tmp_path, sessions=100, days=1, start_date=START, seed=0)
    text = str(summary)
    assert "\n" not in text and "100 sessions" in text
    assert {p.name for p in summary.files} == {CLICKS_FILE, BUYS_FILE, TRUTH_FILE}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "csv"}, "unknown generate format"),
        ({"sessions": 0}, "sessions >= 1"),
        ({"seed": -1}, "seed"),
        ({"world": "mars"}, "unknown world 'mars'; expected one of default, counts, appeal, order"),
    ],
)
def test_given_bad_arguments_then_a_one_line_user_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"sessions": 10, "days": 1, "start_date": START, "seed": 0, **kwargs}
    with pytest.raises(ClickstreamError, match=message):
        generate_logs(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worlds")
    for name in WORLDS:
        generate_logs(root / name, sessions=30_000, days=2, start_date=START, seed=5, world=name)
    return {name: root / name for name in WORLDS}


def test_given_each_world_then_files_keep_the_format_and_truth_separates_buyers(worlds: dict[str, Path]) -> None:
    shapes = {}
    for name, out in worlds.items():
        clicks = read_headerless(out / CLICKS_FILE, CLICK_COLUMNS)
        truth = pl.read_parquet(out / TRUTH_FILE)
        lines = (out / CLICKS_FILE).read_text().splitlines()[:500]
        assert all(CLICK_LINE.match(line) for line in lines), name
        assert 0.04 < truth["label"].mean() < 0.08, name
        assert roc_auc_score(truth["label"], truth["p_buy"]) > 0.78, name
        lengths = clicks.group_by("session_id").len()["len"]
        shapes[name] = (round(lengths.mean(), 1), clicks["item_id"].n_unique())
    assert len(set(shapes.values())) == len(WORLDS)  # each world its own lengths and catalogue


def _shuffled_within_sessions(clicks: Clicks, seed: int) -> Clicks:
    session = np.repeat(np.arange(len(clicks.lengths)), clicks.lengths)
    rows = np.lexsort((np.random.default_rng(seed).random(len(session)), session))
    return Clicks(clicks.offsets, clicks.item[rows], clicks.ts_ms)


@pytest.mark.parametrize(("name", "order_matters"), [("counts", 0.0), ("order", 0.5), ("appeal", 0.3)])
def test_given_a_world_when_clicks_are_shuffled_then_p_buy_moves_as_its_rule_says(
    name: str, order_matters: float
) -> None:
    """counts reads no order (only the dwell on each position moves with the items); order reads it most."""
    world = WORLDS[name]
    catalogue = make_catalogue(
        np.random.default_rng(3), 2_000, category_scale=world.category_scale, item_sd=world.item_sd
    )
    clicks = simulate_clicks(np.random.default_rng(4), catalogue, np.zeros(5_000, dtype=np.int64), world)
    shuffled = _shuffled_within_sessions(clicks, 5)
    before, after = buy_probability(clicks, catalogue, world), buy_probability(shuffled, catalogue, world)
    moved = np.abs(np.log(before / after))[clicks.lengths >= 3]
    if order_matters == 0.0:
        np.testing.assert_allclose(before, after, rtol=1e-9)
    else:
        assert (moved > 0.1).mean() > order_matters


def test_given_blocks_simulated_in_memory_then_they_are_the_sessions_generate_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate, "BLOCK_SESSIONS", 700)  # three blocks, the last one short
    generate_logs(tmp_path, sessions=1_900, days=2, start_date=START, seed=4, world="appeal")
    shop = WORLDS["appeal"]
    catalogue = generate.world_catalogue(shop, sessions=1_900, seed=4)
    blocks = list(generate.simulate_blocks(catalogue, shop, sessions=1_900, days=2, start_date=START, seed=4))

    assert [len(block.ids) for block in blocks] == [700, 700, 500]
    truth = pl.read_parquet(tmp_path / TRUTH_FILE).sort("session_id")
    simulated = pl.DataFrame(
        {
            "session_id": np.concatenate([block.ids for block in blocks]).astype(str),
            "p_buy": np.concatenate([block.p_buy for block in blocks]),
            "label": np.concatenate([block.label for block in blocks]),
        }
    ).sort("session_id")
    assert truth.select("session_id", "p_buy", "label").equals(simulated)
    clicks = read_headerless(tmp_path / CLICKS_FILE, CLICK_COLUMNS)
    assert clicks.height == sum(len(block.clicks.item) for block in blocks)
