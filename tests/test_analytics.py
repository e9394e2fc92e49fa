"""What analysts pull: `scores` filters, `sql` over the lake, `session` traces."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError, NoDataError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.analytics import explain_session, find_session, query_scores
from clickstream.pipeline.serve.scoring import score_dates
from clickstream.pipeline.serve.sql import run_sql


@pytest.fixture
def settings(champion_settings: Settings) -> Settings:
    """This module's lakes are scored with the tiny trained champion."""
    return champion_settings


@pytest.fixture
def scored(settings: Settings) -> list[dt.date]:
    """Three days of synthetic sessions scored by the champion; half of them with cookies."""
    lake = Lake(settings.lake)
    sequences = synthetic_sequences(sessions=400, days=3).with_columns(
        cookie_id=pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.format("c{}", pl.int_range(pl.len()) % 7))
    )
    days = write_sequences(lake, sequences)
    score_dates(settings, days[0], days[-1])
    return days


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_given_no_dates_when_querying_then_only_the_latest_day_sorted_by_score_then_id(
    settings: Settings, scored: list[dt.date]
) -> None:
    frame = query_scores(settings, None, None)

    assert frame["date"].unique().to_list() == [scored[-1]]
    assert frame.height > 0
    expected = frame.sort(["score", "session_id"], descending=[True, False])
    assert frame.equals(expected)


def test_given_filters_when_querying_then_every_row_passes_them_and_top_keeps_the_best(
    settings: Settings, scored: list[dt.date]
) -> None:
    everything = query_scores(settings, scored[0], scored[-1])
    assert everything.height == 400 and everything["session_id"].n_unique() == 400

    top = query_scores(settings, scored[0], scored[-1], top=5)
    assert top.equals(everything.head(5))

    high = query_scores(settings, scored[0], scored[-1], min_score=0.8)
    assert high.height == (everything["score"] >= 0.8).sum() and (high["score"] >= 0.8).all()

    mine = query_scores(settings, scored[0], scored[-1], cookie="c3")
    assert mine.height > 0 and mine["cookie_id"].unique().to_list() == ["c3"]

    one = everything["session_id"][17]
    assert query_scores(settings, scored[0], scored[-1], session=one)["session_id"].to_list() == [one]

    middle = query_scores(settings, scored[1], scored[1])
    assert middle["date"].unique().to_list() == [scored[1]]


def test_given_a_window_without_scores_when_querying_then_an_empty_frame_with_the_columns(
    settings: Settings, scored: list[dt.date]
) -> None:
    frame = query_scores(settings, dt.date(2020, 1, 1), dt.date(2020, 1, 2))

    assert frame.height == 0 and frame.columns == query_scores(settings, None, None).columns


def test_given_an_empty_lake_when_querying_then_a_no_data_error_says_to_score_first(settings: Settings) -> None:
    with pytest.raises(NoDataError, match="clickstream score"):
        query_scores(settings, None, None)


def test_given_scored_sessions_when_running_sql_then_the_lake_tables_answer(
    settings: Settings, scored: list[dt.date]
) -> None:
    per_day = run_sql(settings, "SELECT date, COUNT(*) AS n FROM scores GROUP BY date ORDER BY date")
    assert per_day["date"].to_list() == scored and per_day["n"].sum() == 400

    joined = run_sql(
        settings,
        "SELECT COUNT(*) AS n FROM scores s JOIN sequences q ON s.session_id = q.session_id WHERE q.label IS NOT NULL",
    )
    assert joined["n"][0] == 400

    cookies = run_sql(settings, "SELECT cookie_id, sessions FROM cookie_intent ORDER BY cookie_id")
    assert cookies["cookie_id"].to_list() == [f"c{i}" for i in range(7)] and cookies["sessions"].sum() == 200

    empty = run_sql(settings, "SELECT COUNT(*) AS n FROM events")  # no events/ in this lake: empty, not an error
    assert empty["n"][0] == 0


# the decile query of docs/analysts.md: only sessions after the scoring model's training window
HONEST_DECILES = """
SELECT decile, COUNT(*) AS sessions, AVG(CAST(label AS DOUBLE)) AS buy_rate
FROM (
  SELECT s.score, q.label, NTILE(10) OVER (ORDER BY s.score, s.session_id) AS decile
  FROM scores s
  JOIN sequences q ON s.session_id = q.session_id AND s.date = q.date
  JOIN models m ON s.model_version = m.version
  WHERE q.label IS NOT NULL AND s.date > m.trained_through
)
GROUP BY decile ORDER BY decile
"""


def test_given_days_inside_the_training_window_when_the_decile_query_joins_models_then_only_later_days_count(
    settings: Settings,
) -> None:
    days = write_sequences(Lake(settings.lake), synthetic_sequences(sessions=600, days=5, seed=5))
    score_dates(settings, days[0], days[-1])
    (through,) = run_sql(settings, "SELECT trained_through FROM models WHERE version = '1'")["trained_through"]
    later = run_sql(settings, f"SELECT COUNT(*) AS n FROM scores WHERE date > DATE '{through}'")["n"][0]

    deciles = run_sql(settings, HONEST_DECILES)

    assert through == days[2] and 0 < later < 600
    assert deciles["sessions"].sum() == later and deciles["decile"].to_list() == list(range(1, 11))


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("SELEC * FROM scores", "SQL error: Parser Error"),
        ("SELECT nope FROM scores", 'Referenced column "nope" not found'),
        ("SELECT * FROM nowhere", "Table with name nowhere does not exist"),
    ],
)
def test_given_a_bad_query_when_running_sql_then_a_one_line_clickstream_error(
    settings: Settings, scored: list[dt.date], query: str, fragment: str
) -> None:
    with pytest.raises(ClickstreamError, match=fragment) as error:
        run_sql(settings, query)
    assert "\n" not in str(error.value)


def test_given_a_bad_query_on_the_command_line_then_one_line_on_stderr_and_exit_code_2(
    settings: Settings, scored: list[dt.date]
) -> None:
    result = _run_cli("sql", "SELECT nope FROM scores", "--lake", settings.lake)

    assert result.returncode == 2
    assert result.stderr.startswith("error: SQL error:") and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_given_a_query_without_models_on_the_command_line_then_neither_torch_nor_mlflow_is_imported(
    settings: Settings, scored: list[dt.date]
) -> None:
    code = (
        "import sys\n"
        "from clickstream.pipeline.orchestrate.cli import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'mlflow') if m in sys.modules))\n"
    )
    query = "SELECT COUNT(*) AS n FROM scores"  # a registry exists, but the query does not name `models`
    result = subprocess.run(
        [sys.executable, "-c", code, "sql", query, "--format", "csv", "--lake", settings.lake],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["n", "400", "HEAVY="]


def test_given_scores_as_csv_on_the_command_line_then_stdout_is_only_the_csv(
    settings: Settings, scored: list[dt.date]
) -> None:
    result = _run_cli("scores", "--top", "3", "--format", "csv", "--lake", settings.lake)

    assert result.returncode == 0, result.stderr
    frame = pl.read_csv(result.stdout.encode())
    assert frame.height == 3 and frame.columns[:2] == ["date", "session_id"]
    assert result.stderr.strip() == "3 rows x 9 columns"


def test_given_a_session_when_explained_then_one_row_per_event_in_order_ending_at_its_score(
    settings: Settings, scored: list[dt.date]
) -> None:
    session = run_sql(
        settings,
        "SELECT q.session_id, s.score FROM sequences q JOIN scores s ON q.session_id = s.session_id "
        "WHERE q.n_events >= 4 ORDER BY q.session_id LIMIT 1",
    )
    sequence = find_session(Lake(settings.lake), session["session_id"][0])

    trace = explain_session(settings, session["session_id"][0], None)

    n = sequence["n_events"][0]
    assert trace.columns == ["position", "seconds_since_start", "event", "item_id", "category", "intent", "change"]
    assert trace["position"].to_list() == list(range(1, n + 1))
    assert trace["item_id"].to_list() == sequence["item_id"][0].to_list()
    assert trace["event"].unique().to_list() == ["view"]
    assert trace["intent"].is_between(0, 1).all()
    assert trace["intent"][-1] == pytest.approx(session["score"][0], abs=1e-5)  # the last step is the score
    assert trace["change"].sum() == pytest.approx(trace["intent"][-1], abs=1e-5)
    assert trace["seconds_since_start"][0] == 0.0 and trace["seconds_since_start"].is_sorted()


def test_given_an_unknown_session_when_traced_then_a_no_data_error_names_it(
    settings: Settings, scored: list[dt.date]
) -> None:
    with pytest.raises(NoDataError, match="'nope' is not in sequences"):
        find_session(Lake(settings.lake), "nope")
