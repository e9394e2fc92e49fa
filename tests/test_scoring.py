"""Batch scoring: sequences -> scores (one commit per run, recording what it read) and the
cookie_intent rollup rebuilt from one scores version."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.models.registry.loading import load_model
from clickstream.pipeline.core.config import MODEL_NAME, Settings
from clickstream.pipeline.core.errors import ModelNotFoundError, NoDataError
from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.core.schemas import COOKIE_INTENT, SCORES, UTC_TS
from clickstream.pipeline.serve.scoring import refresh_cookie_intent, score_dates, score_frame, scoring_dates


def _scores(lake: Lake) -> pl.DataFrame:
    scan = lake.scan("scores")
    assert scan is not None
    return scan.collect()


def test_given_three_days_when_scored_then_each_day_has_one_row_per_session_sorted_by_id(
    champion_settings: Settings,
) -> None:
    lake = Lake(champion_settings.lake)
    sequences = synthetic_sequences(sessions=300, days=3, seed=1)
    days = write_sequences(lake, sequences)

    summary = score_dates(champion_settings, days[0], days[-1])

    assert summary.sessions == 300 and summary.dates == tuple(days)
    for day in days:
        part = lake.read("scores", day, day)
        assert part.drop("date", "bucket").schema == SCORES and part["date"].unique().to_list() == [day]
        assert part["bucket"].unique().to_list() == [0]  # a lake of one bucket
        assert part["session_id"].to_list() == sorted(part["session_id"].to_list())
        expected = sequences.filter(pl.col("session_start").dt.date() == day)["session_id"].sort()
        assert part["session_id"].to_list() == expected.to_list()
    scores = _scores(lake)
    assert scores["session_id"].n_unique() == 300
    assert scores["score"].is_between(0, 1).all() and scores["score"].n_unique() > 10
    assert scores["model_name"].unique().to_list() == [MODEL_NAME]
    assert scores["model_version"].unique().to_list() == ["1"]
    assert scores["scored_at"].n_unique() == 1
    assert str(summary).startswith(f"scored 300 sessions on {days[0]}..{days[-1]} (3 dates) with {MODEL_NAME} v1")
    # one commit for the scores, recording what it read and with which model; none for the rollup: no cookie
    scored = lake.history("scores")[0]
    assert (scored.stage, scored.rows) == ("score", 300)
    assert scored.metadata["sequences_version"] == str(lake.version("sequences"))
    assert (scored.metadata["model_name"], scored.metadata["model_version"]) == (MODEL_NAME, "1")
    assert (scored.metadata["first_date"], scored.metadata["last_date"]) == (str(days[0]), str(days[-1]))
    assert lake.version("cookie_intent") is None and summary.cookies == 0  # synthetic sessions have no cookie


def test_given_a_scored_day_when_rescored_then_its_scores_are_replaced_with_the_same_scores(
    champion_settings: Settings,
) -> None:
    lake = Lake(champion_settings.lake)
    days = write_sequences(lake, synthetic_sequences(sessions=200, days=1, seed=2))
    score_dates(champion_settings, None, None)
    first = _scores(lake)
    version = lake.version("scores")

    score_dates(champion_settings, None, None, f"models:/{MODEL_NAME}/1")

    again = _scores(lake)
    assert again.drop("scored_at").equals(first.drop("scored_at"))  # replaced, not added to
    assert lake.rows_per_date("scores") == {days[0]: 200}
    assert lake.version("scores") == version + 1


def test_given_scores_in_a_row_order_when_scored_again_shuffled_then_each_session_keeps_its_score(
    champion_settings: Settings,
) -> None:
    sequences = synthetic_sequences(sessions=200, days=1, seed=3)
    scorer = load_model(champion_settings)
    at = dt.datetime(2014, 4, 5, tzinfo=dt.UTC)

    ordered = score_frame(sequences, scorer, at)
    shuffled = score_frame(sequences.sample(fraction=1.0, shuffle=True, seed=9), scorer, at)

    assert shuffled.equals(ordered)


def test_given_no_champion_when_scoring_then_a_one_line_model_error(settings: Settings) -> None:
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=50, days=1))

    with pytest.raises(ModelNotFoundError, match="champion"):
        score_dates(settings, None, None)


def test_given_no_dates_when_choosing_dates_then_the_latest_sequences_date_is_scored(settings: Settings) -> None:
    lake = Lake(settings.lake)
    days = write_sequences(lake, synthetic_sequences(sessions=100, days=3))

    assert scoring_dates(lake, None, None) == [days[-1]]
    assert scoring_dates(lake, days[1], None) == days[1:]
    assert scoring_dates(lake, None, days[0]) == days[:1]


def test_given_no_sequences_in_the_window_when_scoring_then_a_no_data_error_names_the_window(
    settings: Settings,
) -> None:
    lake = Lake(settings.lake)
    write_sequences(lake, synthetic_sequences(sessions=50, days=1))

    with pytest.raises(NoDataError, match=r"2020-01-01\.\.2020-01-02"):
        scoring_dates(lake, dt.date(2020, 1, 1), dt.date(2020, 1, 2))


def _score_rows(rows: list[tuple[str, str | None, str, float]]) -> pl.DataFrame:
    session, cookie, start, score = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "session_id": session,
            "cookie_id": cookie,
            "session_start": [dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC) for s in start],
            "n_events": [3] * len(rows),
            "score": score,
            "model_name": ["m"] * len(rows),
            "model_version": ["1"] * len(rows),
            "scored_at": [dt.datetime(2014, 4, 3, tzinfo=dt.UTC)] * len(rows),
        },
        schema=SCORES,
    )


def test_given_hand_built_scores_when_rolled_up_then_cookie_intent_has_sessions_last_seen_latest_and_max(
    settings: Settings,
) -> None:
    lake = Lake(settings.lake)
    day1 = [
        ("a1", "A", "2014-04-01 10:00", 0.9),
        ("b1", "B", "2014-04-01 11:00", 0.2),
        ("x", None, "2014-04-01 12:00", 1.0),  # unknown cookie: not in the rollup
    ]
    day2 = [("a2", "A", "2014-04-02 09:00", 0.3), ("a3", "A", "2014-04-02 08:00", 0.5)]
    day1_date = dt.date(2014, 4, 1)
    version = _commit_scores(lake, day1_date, day1)
    assert refresh_cookie_intent(lake, version, [day1_date], 0) == 2
    assert lake.read("cookie_intent").select("cookie_id", "date").rows() == [("A", day1_date), ("B", day1_date)]
    version = _commit_scores(lake, dt.date(2014, 4, 2), day2)

    assert refresh_cookie_intent(lake, version, [dt.date(2014, 4, 2)], 0) == 1  # only A scored again

    rollup = lake.read("cookie_intent")
    expected = pl.DataFrame(
        {  # in the date order of last_seen, then by cookie
            "cookie_id": ["B", "A"],
            "sessions": [1, 3],
            "last_seen": [dt.datetime(2014, 4, 1, 11, tzinfo=dt.UTC), dt.datetime(2014, 4, 2, 9, tzinfo=dt.UTC)],
            "latest_score": [0.2, 0.3],
            "max_score": [0.2, 0.9],
        },
        schema=COOKIE_INTENT,
    )
    assert rollup.drop("date", "bucket").equals(expected)  # A's day-1 row went, B's stayed
    assert rollup["date"].equals(rollup["last_seen"].dt.date(), check_names=False)
    assert rollup.schema["last_seen"] == UTC_TS
    assert lake.commit_metadata("cookie_intent", lake.version("cookie_intent"))["scores_version"] == str(version)


def test_given_a_rescored_day_without_a_cookie_when_rolled_up_then_its_row_goes_and_others_stay(
    settings: Settings,
) -> None:
    lake = Lake(settings.lake)
    day1, day2 = dt.date(2014, 4, 1), dt.date(2014, 4, 2)
    refresh_cookie_intent(lake, _commit_scores(lake, day1, [("a1", "A", "2014-04-01 10:00", 0.75)]), [day1], 0)
    refresh_cookie_intent(lake, _commit_scores(lake, day2, [("c1", "C", "2014-04-02 10:00", 0.4)]), [day2], 0)
    assert lake.read("cookie_intent").get_column("cookie_id").to_list() == ["A", "C"]

    version = _commit_scores(lake, day1, [("d1", "D", "2014-04-01 09:00", 0.5)])  # A's session is gone
    assert refresh_cookie_intent(lake, version, [day1], 0) == 2  # A and D touched

    assert lake.read("cookie_intent").select("cookie_id", "sessions", "max_score").rows() == [
        ("D", 1, 0.5),
        ("C", 1, 0.4000000059604645),
    ]


def _commit_scores(lake: Lake, day: dt.date, rows: list[tuple[str, str | None, str, float]]) -> int:
    """Replace the scores of `day` with `rows`; the new scores version."""
    frame = _score_rows(rows).with_columns(date=pl.lit(day))
    return lake.commit("scores", frame, replace=dates_predicate(day, day), stage="test")
