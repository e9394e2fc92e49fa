from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features.sequences import build_sequences, read_sequences, sessions_of
from clickstream.features.sessionize import sessionize
from clickstream.pipeline.core.buckets import bucket_of
from clickstream.pipeline.core.config import SequenceConfig
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.core.lake import NOTHING, Lake, batch_predicate
from clickstream.pipeline.core.schemas import EVENT_TYPE_CODE, EVENTS, SEQUENCES

DAY = dt.date(2014, 4, 1)
T0 = dt.datetime(2014, 4, 1, tzinfo=dt.UTC)


def _events(rows: list[dict]) -> pl.DataFrame:
    """EVENTS rows from dicts with at least session_id or cookie_id, seconds (after T0), event_type, item_id."""
    defaults = {"session_id": None, "cookie_id": None, "category": None, "price": None, "quantity": None}
    full = [
        {
            **defaults,
            "source": "yoochoose" if row.get("session_id") else "events",
            "labelled": True,
            **{k: v for k, v in row.items() if k != "seconds"},
            "ts": T0 + dt.timedelta(seconds=row["seconds"]),
        }
        for row in rows
    ]
    return pl.DataFrame(full, schema=EVENTS)


def _write_by_day(lake: Lake, events: pl.DataFrame, batch: str = "0") -> int:
    """Commit `events` as ingest batch `batch` (replacing that batch's rows), each row on the date of its ts."""
    dated = events.with_columns(batch=pl.lit(batch), date=pl.col("ts").dt.date()).sort("date")
    return lake.commit("events", dated, replace=batch_predicate(batch), stage="test")


def _write_sequences(lake: Lake, frames: list[pl.DataFrame], day: dt.date = DAY) -> None:
    """Commit each frame of SEQUENCES rows on `day` in a commit of its own, adding to the rows there."""
    for frame in frames:
        lake.commit("sequences", frame.with_columns(date=pl.lit(day)), replace=NOTHING, stage="test")


def _view(seconds: float, item: str = "i", **row: object) -> dict:
    return {"seconds": seconds, "event_type": "view", "item_id": item, **row}


def _purchase(seconds: float, item: str = "i", **row: object) -> dict:
    return {"seconds": seconds, "event_type": "purchase", "item_id": item, **row}


# ---- labels and leakage --------------------------------------------------------------------


def test_yoochoose_buyer_keeps_all_clicks_and_loses_its_purchases():
    events = _events(
        [_view(0, "a", session_id="1"), _purchase(60, "a", session_id="1"), _view(120, "b", session_id="1")]
    )

    frame, counts = sessions_of(events, DAY, DAY, SequenceConfig())

    assert frame.row(0, named=True)["label"] is True
    assert frame["item_id"].to_list() == [["a", "b"]]
    assert frame["n_events_total"].to_list() == [3]
    assert counts.buyers == 1


def test_event_log_session_drops_the_purchase_and_everything_at_or_after_it():
    events = _events(
        [
            _view(0, "a", cookie_id="c"),
            _view(30, "b", cookie_id="c"),
            _view(60, "tie", cookie_id="c"),
            _purchase(60, "b", cookie_id="c"),
            _view(90, "after", cookie_id="c"),
        ]
    )

    frame, _ = sessions_of(events, DAY, DAY, SequenceConfig())

    row = frame.row(0, named=True)
    assert row["label"] is True
    assert row["item_id"] == ["a", "b"]
    assert row["dwell_known"] == [True, False]  # time to the purchase would leak: unknown


def test_session_whose_first_event_is_the_purchase_is_dropped_and_counted():
    events = _events([_purchase(0, "a", cookie_id="c"), _view(10, "b", cookie_id="c"), _view(5000, cookie_id="d")])

    frame, counts = sessions_of(events, DAY, DAY, SequenceConfig())

    assert frame["cookie_id"].to_list() == ["d"]
    assert counts.dropped_empty == 1


def test_label_is_unknown_without_outcome_or_while_a_cookie_session_may_still_be_open():
    events = _events(
        [
            {**_view(0, session_id="no-buys-file"), "labelled": False},
            _view(0, cookie_id="closed"),
            _view(7200, cookie_id="open"),
            _view(7200 + 600, cookie_id="newest"),
        ]
    )

    frame, counts = sessions_of(events, DAY, DAY, SequenceConfig())

    labels = dict(zip(frame["session_id"].str.split(":").list.first(), frame["label"], strict=True))
    assert labels == {"no-buys-file": None, "closed": False, "open": None, "newest": None}
    assert counts.unknown_labels == 3


def test_excluded_event_types_leave_the_input_but_still_count_in_the_session():
    events = _events(
        [
            _view(0, "a", cookie_id="c"),
            {**_view(10, "b", cookie_id="c"), "event_type": "add_to_cart"},
            _view(9000, cookie_id="z"),
        ]
    )

    frame, _ = sessions_of(events, DAY, DAY, SequenceConfig(exclude_event_types=("add_to_cart",)))

    row = frame.row(0, named=True)
    assert (row["item_id"], row["event_type"], row["n_events_total"]) == (["a"], [0], 2)


def test_long_session_keeps_its_last_events_and_is_counted_as_truncated():
    events = _events([_view(i, str(i), session_id="s") for i in range(7)])

    frame, counts = sessions_of(events, DAY, DAY, SequenceConfig(max_events=3))

    row = frame.row(0, named=True)
    assert row["item_id"] == ["4", "5", "6"]
    assert (row["n_events"], row["n_events_total"], row["truncated"]) == (3, 7, True)
    assert row["log_gap_prev"][0] == pytest.approx(math.log1p(1.0))  # the gap to the dropped event stays
    assert counts.truncated == 1


def test_features_are_log_seconds_to_neighbours_and_the_start_hour_and_weekday():
    events = _events([_view(3600 * 5, "a", session_id="s"), _view(3600 * 5 + 9, "b", session_id="s")])

    row = sessions_of(events, DAY, DAY, SequenceConfig())[0].row(0, named=True)

    assert row["log_gap_prev"] == pytest.approx([0.0, math.log1p(9)])
    assert row["log_dwell"] == pytest.approx([math.log1p(9), 0.0])
    assert row["dwell_known"] == [True, False]
    assert (row["start_hour"], row["start_weekday"]) == (5, 2)  # 2014-04-01 was a Tuesday


# ---- properties ----------------------------------------------------------------------------

event_rows = st.lists(
    st.tuples(
        st.sampled_from(["1", "2", "3", None, None]),  # YOOCHOOSE session or a cookie log event
        st.sampled_from(["c1", "c2"]),
        st.integers(0, 6 * 3600),
        st.sampled_from(["view", "view", "add_to_cart", "purchase", "other"]),
        st.sampled_from(["a", "b", "c"]),
    ),
    min_size=1,
    max_size=50,
)


def _expected(events: pl.DataFrame, config: SequenceConfig) -> dict[str, tuple[list[str], list[int], bool | None]]:
    """The contract's rules applied session by session in plain Python (small inputs only)."""
    coded = events.with_columns(pl.col("event_type").replace_strict(EVENT_TYPE_CODE, return_dtype=pl.Int8))
    grouped = sessionize(coded, config.session_gap_minutes)
    session_id = np.repeat(grouped.session_id.to_numpy(), np.diff(grouped.offsets))
    sessions = coded[grouped.rows].with_columns(session_id=pl.Series(session_id, dtype=pl.String))
    newest = events["ts"].max()
    gap = dt.timedelta(minutes=config.session_gap_minutes)
    expected = {}
    for (session_id,), group in sessions.group_by("session_id"):
        rows = group.sort("ts", "event_type", "item_id").rows(named=True)
        yoochoose = rows[0]["source"] == "yoochoose"
        purchases = [r["ts"] for r in rows if r["event_type"] == EVENT_TYPE_CODE["purchase"]]
        kept = [
            r
            for r in rows
            if r["event_type"] != EVENT_TYPE_CODE["purchase"]
            and (yoochoose or not purchases or r["ts"] < min(purchases))
        ][-config.max_events :]
        if kept:
            open_ = not yoochoose and not purchases and rows[-1]["ts"] > newest - gap
            label = None if open_ else bool(purchases)
            expected[session_id] = ([r["item_id"] for r in kept], [r["event_type"] for r in kept], label)
    return expected


@hypothesis_settings(max_examples=80, deadline=None)
@given(rows=event_rows, max_events=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_property_sequences_are_the_sessions_events_in_time_order_minus_removed_ones(rows, max_events, seed):
    events = _events(
        [
            {"session_id": s, "cookie_id": None if s else c, "seconds": t, "event_type": e, "item_id": i}
            for s, c, t, e, i in rows
        ]
    )
    config = SequenceConfig(max_events=max_events)

    frame, counts = sessions_of(events, DAY, DAY, config)
    shuffled, _ = sessions_of(events.sample(fraction=1.0, shuffle=True, seed=seed), DAY, DAY, config)

    assert frame.equals(shuffled)
    assert frame.schema == SEQUENCES
    order = frame.select("session_start", "session_id")
    assert order.equals(order.sort(pl.all()))
    got = {
        row["session_id"]: (row["item_id"], row["event_type"], row["label"]) for row in frame.iter_rows(named=True)
    }
    assert got == _expected(events, config)
    assert counts.events == frame["n_events"].sum() == frame["item_id"].list.len().sum()
    lengths = frame.select(pl.col(c).list.len() for c in ("item_id", "category", "log_gap_prev", "dwell_known"))
    assert all((lengths[c] == frame["n_events"]).all() for c in lengths.columns)
    assert not frame["event_type"].explode().is_in([EVENT_TYPE_CODE["purchase"]]).any()


@hypothesis_settings(max_examples=60, deadline=None)
@given(rows=event_rows, buckets=st.integers(2, 5))
def test_property_sessions_of_each_bucket_are_the_sessions_of_the_whole(rows, buckets):
    events = _events(
        [
            {"session_id": s, "cookie_id": None if s else c, "seconds": t, "event_type": e, "item_id": i}
            for s, c, t, e, i in rows
        ]
    ).with_columns(bucket_of(buckets))
    config = SequenceConfig(max_events=4)
    newest = int(events["ts"].max().timestamp() * 1_000_000)

    whole, _ = sessions_of(events.drop("bucket"), DAY, DAY, config)
    parts = [
        sessions_of(part.drop("bucket"), DAY, DAY, config, newest)[0]
        for part in events.partition_by("bucket", maintain_order=True)
    ]

    assert pl.concat(parts).sort("session_start", "session_id").equals(whole)


# ---- the lake ------------------------------------------------------------------------------


def _lake_events() -> pl.DataFrame:
    return _events(
        [
            _view(3600, "a", cookie_id="early"),
            _view(86_400 - 600, "x", cookie_id="night"),  # 23:50 on day 1
            _view(86_400 + 600, "y", cookie_id="night"),  # 00:10 on day 2: same session
            _purchase(86_400 + 700, "y", cookie_id="night"),
            _view(86_400 + 3600, "b", session_id="7"),
            _view(2 * 86_400 + 3600, "c", session_id="8"),
        ]
    )


def test_a_session_crossing_midnight_belongs_to_its_start_day_and_is_complete(settings):
    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())

    build_sequences(settings, DAY, DAY)
    day1 = read_sequences(lake, DAY, DAY)
    build_sequences(settings, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    day2 = read_sequences(lake, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))

    night = day1.filter(pl.col("cookie_id") == "night").row(0, named=True)
    assert (night["item_id"], night["label"]) == (["x", "y"], True)
    assert day2["session_id"].to_list() == ["7"]  # the night session's day-2 events made no new session


def test_rebuilding_gives_identical_sequences_and_the_same_session_ids_in_any_range(settings):
    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())

    summary = build_sequences(settings, None, None)
    first = read_sequences(lake, None, None)
    build_sequences(settings, DAY + dt.timedelta(days=1), None)
    again = read_sequences(lake, None, None)

    assert first.equals(again)
    assert first["session_id"].to_list() == ["early:1396314000000", "night:1396396200000", "7", "8"]
    assert summary.dates == [DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)]
    assert lake.dates("sequences") == summary.dates
    text = str(summary)
    assert "\n" not in text and "4 sessions" in text and "1 buyers" in text


def test_read_sequences_of_an_empty_range_is_an_empty_frame_with_the_schema(settings):
    frame = read_sequences(Lake(settings.lake), DAY, DAY)

    assert frame.height == 0 and frame.schema == SEQUENCES


def test_building_without_events_in_the_range_is_a_user_error(settings):
    with pytest.raises(NoDataError, match="no events"):
        build_sequences(settings, DAY, DAY)


def test_read_sequences_returns_sessions_in_start_then_id_order_whatever_the_commit_order(settings):
    lake = Lake(settings.lake)
    events = _events([_view(60, session_id=s) for s in "bdae"] + [_view(0, session_id="c")])
    frame, _ = sessions_of(events, DAY, DAY, SequenceConfig())
    by_id = {session_id: frame.filter(pl.col("session_id") == session_id) for session_id in "abcde"}
    # one commit's rows backwards, then one session per commit, newest ids first
    _write_sequences(lake, [pl.concat([by_id["b"], by_id["a"]]), by_id["e"], by_id["d"], by_id["c"]])

    assert len(lake.files("sequences")) == 4
    got = read_sequences(lake, DAY, DAY)
    assert got["session_id"].to_list() == ["c", "a", "b", "d", "e"]
    assert got.equals(frame)


def test_read_sequences_of_some_columns_gives_those_in_schema_order_and_the_same_rows(settings):
    lake = Lake(settings.lake)
    events = _events([_view(60, session_id="b"), _view(60, session_id="a"), _view(0, session_id="c")])
    frame, _ = sessions_of(events, DAY, DAY, SequenceConfig())
    _write_sequences(lake, [frame.reverse()])

    some = read_sequences(lake, DAY, DAY, ["item_id", "label"])

    assert some.columns == ["label", "item_id"]
    assert some.equals(read_sequences(lake, DAY, DAY).select("label", "item_id"))
    assert some["label"].len() == 3
    assert read_sequences(lake, DAY + dt.timedelta(days=1), None, ["label"]).columns == ["label"]
    with pytest.raises(ValueError, match="not SEQUENCES columns"):
        read_sequences(lake, DAY, DAY, ["label", "nope"])


def test_ids_are_strings_to_any_delta_reader_dictionary_encoded_on_disk_and_categorical_to_read_sequences(settings):
    from deltalake import DeltaTable

    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())
    build_sequences(settings, None, None)

    delta = DeltaTable(lake.table_uri("sequences"))
    declared = pa.schema(delta.schema())
    outside = delta.to_pyarrow_dataset().to_table().schema
    stored = pq.ParquetFile(lake.files("sequences", DAY, DAY)[0])
    frame = read_sequences(lake, DAY, DAY)

    for column in ("item_id", "category"):
        assert declared.field(column).type.value_type in (pa.string(), pa.large_string(), pa.string_view())
        assert pa.types.is_string(outside.field(column).type.value_type) or pa.types.is_large_string(
            outside.field(column).type.value_type
        )
        path = f"{column}.list.element"
        assert any("DICTIONARY" in str(e) for e in stored.metadata.row_group(0).column(_index(stored, path)).encodings)
        assert frame.schema[column] == pl.List(pl.Categorical())
    night = frame.filter(pl.col("cookie_id") == "night")
    assert night["item_id"].cast(pl.List(pl.String)).to_list() == [["x", "y"]]
    assert night["category"].cast(pl.List(pl.String)).to_list() == [[None, None]]


def _index(parquet: pq.ParquetFile, path: str) -> int:
    columns = parquet.metadata.row_group(0)
    return next(i for i in range(columns.num_columns) if columns.column(i).path_in_schema == path)


def test_the_stored_rows_do_not_depend_on_the_order_the_process_first_saw_the_ids(settings):
    """Polars numbers categories as it meets them: the table must hold the ids, not those numbers."""
    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())
    build_sequences(settings, None, None)
    first = lake.read("sequences")

    seen_backwards = pl.Series(["y", "x", "c", "b", "a", "S", "0"]).cast(pl.Categorical)  # other numbers
    build_sequences(settings, DAY, DAY)

    again = lake.read("sequences")
    assert again.equals(first)
    assert again.filter(pl.col("date") == DAY)["item_id"].to_list() == [["a"], ["x", "y"]]
    assert seen_backwards.len() == 7


def test_the_sequences_commit_records_the_events_version_it_read_and_its_range(settings):
    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())
    build_sequences(settings, None, None)
    read_first = lake.version("events")
    built_first = lake.version("sequences")
    _write_by_day(lake, _events([_view(3 * 86_400, "d", session_id="9")]), batch="1")
    build_sequences(settings, DAY + dt.timedelta(days=1), None)

    assert lake.version("events") == read_first + 1
    first = lake.commit_metadata("sequences", built_first)
    again = lake.commit_metadata("sequences", lake.version("sequences"))
    assert (first["stage"], first["events_version"]) == ("sequences", str(read_first))
    assert (first["first_date"], first["last_date"]) == (str(DAY), str(DAY + dt.timedelta(days=2)))
    assert again["events_version"] == str(read_first + 1)
    assert (again["first_date"], again["last_date"]) == (str(DAY + dt.timedelta(days=1)), str(DAY + dt.timedelta(3)))
    assert read_sequences(lake, DAY + dt.timedelta(days=3), None)["session_id"].to_list() == ["9"]


def _two_batches_built(settings) -> tuple[Lake, pl.DataFrame, dt.date]:
    """The lake's events as batch "a" (the first two dates) and "b" (the third), sequences built."""
    lake = Lake(settings.lake)
    events = _lake_events()
    third = DAY + dt.timedelta(days=2)
    _write_by_day(lake, events.filter(pl.col("ts").dt.date() < third), batch="a")
    _write_by_day(lake, events.filter(pl.col("ts").dt.date() == third), batch="b")
    build_sequences(settings, None, None)
    return lake, events, third


def test_rebuilding_a_range_whose_events_of_a_date_were_removed_leaves_no_sequences_on_that_date(settings):
    lake, _, third = _two_batches_built(settings)
    assert lake.dates("sequences") == [DAY, DAY + dt.timedelta(days=1), third]
    before = read_sequences(lake, DAY, DAY + dt.timedelta(days=1))

    lake.commit("events", [], replace=batch_predicate("b"), stage="test")  # batch b's events are gone
    summary = build_sequences(settings, DAY, third)

    assert lake.dates("events") == [DAY, DAY + dt.timedelta(days=1)]
    assert lake.dates("sequences") == [DAY, DAY + dt.timedelta(days=1)]
    assert read_sequences(lake, third, third).height == 0
    assert lake.read("sequences", third, third).height == 0
    assert summary.dates == [DAY, DAY + dt.timedelta(days=1)]
    assert read_sequences(lake, DAY, DAY + dt.timedelta(days=1))["session_id"].equals(before["session_id"])


def test_given_the_last_dates_events_gone_when_all_is_rebuilt_or_only_that_range_then_no_sequences_stay_there(
    settings,
):
    lake, events, third = _two_batches_built(settings)
    lake.commit("events", [], replace=batch_predicate("b"), stage="test")

    build_sequences(settings, None, None)  # the whole table, not only up to the last events date
    assert third not in lake.dates("sequences") and lake.dates("sequences")

    _write_by_day(lake, events.filter(pl.col("ts").dt.date() == third), batch="b")
    build_sequences(settings, third, third)
    lake.commit("events", [], replace=batch_predicate("b"), stage="test")
    cleared = build_sequences(settings, third, third)  # a range whose events are all gone: cleared, not kept
    assert third not in lake.dates("sequences") and cleared.sessions == 0
    with pytest.raises(NoDataError, match="no events/ partitions for 2014-05-01"):
        build_sequences(settings, dt.date(2014, 5, 1), dt.date(2014, 5, 1))


def test_rebuilding_one_date_leaves_the_sequences_of_other_dates_as_they_were(settings):
    lake = Lake(settings.lake)
    _write_by_day(lake, _lake_events())
    build_sequences(settings, None, None)
    first = lake.read("sequences")
    other_files = lake.files("sequences", DAY + dt.timedelta(days=1), None)

    build_sequences(settings, DAY, DAY)

    assert lake.read("sequences").equals(first)
    assert lake.files("sequences", DAY + dt.timedelta(days=1), None) == other_files  # not rewritten
    assert lake.files("sequences", DAY, DAY) != []
    assert lake.commit_metadata("sequences", lake.version("sequences"))["last_date"] == str(DAY)
