from __future__ import annotations

import datetime as dt
import itertools

import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clickstream.features.sessionize import sessionize

T0 = dt.datetime(2014, 4, 1, 12, tzinfo=dt.UTC)


def _events(rows: list[tuple[str | None, str | None, int, int, str]]) -> pl.DataFrame:
    """(session_id, cookie_id, seconds after T0, event code, item_id) rows."""
    return pl.DataFrame(
        {
            "session_id": [r[0] for r in rows],
            "cookie_id": [r[1] for r in rows],
            "ts": [T0 + dt.timedelta(seconds=r[2]) for r in rows],
            "event_type": pl.Series([r[3] for r in rows], dtype=pl.Int8),
            "item_id": [r[4] for r in rows],
            "category": pl.Series([None] * len(rows), dtype=pl.String),
        },
        schema_overrides={"session_id": pl.String, "cookie_id": pl.String, "ts": pl.Datetime("us", "UTC")},
    )


def _runs(events: pl.DataFrame, gap_minutes: float = 30) -> list[tuple[str, list[tuple]]]:
    """(session_id, its events as (cookie, ts, code, item) in session order) per session, in output order."""
    sessions = sessionize(events, gap_minutes)
    ordered = events.select("cookie_id", "ts", "event_type", "item_id")[sessions.rows].rows()
    bounds = sessions.offsets.tolist()
    return [(sid, ordered[a:b]) for sid, a, b in zip(sessions.session_id, bounds[:-1], bounds[1:], strict=True)]


def test_given_a_cookie_idle_longer_than_the_gap_when_sessionized_then_it_has_two_sessions_named_by_their_start():
    events = _events([(None, "c", 600 + 1801, 0, "c"), (None, "c", 0, 0, "a"), (None, "c", 600, 0, "b")])

    runs = _runs(events)

    start_ms = int(T0.timestamp() * 1000)
    second_ms = start_ms + (600 + 1801) * 1000
    items = [(sid, [e[3] for e in run]) for sid, run in runs]
    assert items == [(f"c:{start_ms}", ["a", "b"]), (f"c:{second_ms}", ["c"])]


def test_given_exactly_the_gap_between_events_when_sessionized_then_the_session_continues():
    assert len(_runs(_events([(None, "c", 0, 0, "a"), (None, "c", 1800, 0, "b")]))) == 1


def test_given_source_session_ids_when_sessionized_then_they_are_kept_and_events_ordered_by_time_type_item():
    events = _events(
        [
            ("9", None, 50, 0, "b"),
            ("9", None, 10, 0, "z"),
            ("10", "x", 5000, 0, "c"),
            ("9", None, 10, 0, "a"),
            ("9", None, 10, 3, "a"),
        ]
    )

    runs = dict(_runs(events))

    assert [(e[2], e[3]) for e in runs["9"]] == [(0, "a"), (0, "z"), (3, "a"), (0, "b")]
    assert [e[3] for e in runs["10"]] == ["c"]


def test_given_events_without_session_or_cookie_when_sessionized_then_it_fails_loudly():
    with pytest.raises(ValueError, match="cannot be sessionized"):
        sessionize(_events([(None, None, 0, 0, "a")]), gap_minutes=30)


cookie_events = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]), st.integers(0, 4 * 3600), st.integers(0, 4), st.sampled_from("ab")
    ),
    min_size=1,
    max_size=40,
)


@hypothesis_settings(max_examples=60, deadline=None)
@given(rows=cookie_events, seed=st.integers(0, 2**16))
def test_property_cookie_sessions_are_gap_separated_runs_and_independent_of_row_order(rows, seed):
    events = _events([(None, cookie, seconds, code, item) for cookie, seconds, code, item in rows])

    runs = _runs(events)

    assert runs == _runs(events.sample(fraction=1.0, shuffle=True, seed=seed))
    assert sorted(e for _, run in runs for e in run) == sorted(events.select(_runs_columns()).rows())
    assert len({sid for sid, _ in runs}) == len(runs)
    for sid, run in runs:
        assert run == sorted(run, key=lambda e: (e[1], e[2], e[3]))
        assert {e[0] for e in run} == {sid.split(":")[0]}
        assert all((b[1] - a[1]).total_seconds() <= 1800 for a, b in itertools.pairwise(run))
    spans = sorted((run[0][0], run[0][1], run[-1][1]) for _, run in runs)
    for (cookie_a, _, end_a), (cookie_b, start_b, _) in itertools.pairwise(spans):
        assert cookie_a != cookie_b or (start_b - end_a).total_seconds() > 1800


def _runs_columns() -> list[str]:
    return ["cookie_id", "ts", "event_type", "item_id"]
