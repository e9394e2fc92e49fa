"""The embedded Airflow: its environment round-trips the settings and keeps every server on 127.0.0.1,
preparing it creates the metadata DB and the gpu pool (through Airflow's CLI) without moving an
Airflow that is already configured, a day maps to the logical date whose data interval starts on it,
and an in-process run leaves each task's log where the UI reads it, with real start and end times."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.orchestrate.airflow_home import (
    DAGS_FOLDER,
    airflow_cli,
    airflow_environ,
    clickstream_environ,
    covered_day,
    finished_runs,
    init_metadata,
    load_dag,
    logical_date,
    prepare_airflow,
    run_dag_for_day,
    task_log_path,
)
from clickstream.pipeline.orchestrate.nightly import NIGHTLY

EMPTY_DAY = dt.date(2014, 3, 1)  # no landing files: every task of the nightly run skips


def test_given_settings_when_airflow_environ_then_state_under_home_repo_dags_no_examples_localhost(settings):
    environ = airflow_environ(settings)
    assert environ["AIRFLOW_HOME"] == str(Path(settings.home) / "airflow")
    assert environ["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert (DAGS_FOLDER / "clickstream_nightly.py").exists()
    assert environ["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert environ["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert environ["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


@pytest.mark.parametrize(("section", "key"), [("api", "host"), ("scheduler", "scheduler_health_check_server_host")])
def test_given_the_embedded_environment_when_airflow_reads_its_config_then_its_servers_bind_to_localhost(
    settings, section, key
):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | airflow_environ(settings)
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "get-value", section, key],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_given_settings_when_a_task_reloads_them_from_the_environment_then_they_are_the_same(settings):
    assert load_settings(environ=clickstream_environ(settings)) == settings


def test_given_airflow_already_imported_when_prepare_airflow_then_home_kept_and_gpu_pool_created(settings, monkeypatch):
    from airflow.configuration import AIRFLOW_HOME

    for name in clickstream_environ(settings):
        monkeypatch.setenv(name, "")  # recorded, so that the teardown removes what prepare_airflow exports
        monkeypatch.delenv(name)
    home = prepare_airflow(settings)
    assert home == Path(AIRFLOW_HOME) != Path(settings.home) / "airflow"
    assert os.environ["CLICKSTREAM_LAKE"] == settings.lake
    (pool,) = json.loads(airflow_cli("pools", "get", NIGHTLY.gpu_pool, "--output", "json"))
    assert int(pool["slots"]) == NIGHTLY.gpu_pool_slots
    assert prepare_airflow(settings) == home  # idempotent


def test_given_a_failing_airflow_command_then_one_line_error_naming_it():
    with pytest.raises(ClickstreamError, match=r"^airflow pools get failed: .*no-such-pool") as error:
        airflow_cli("pools", "get", "no-such-pool")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("cron", "day", "expected"),
    [
        (NIGHTLY.schedule, dt.date(2014, 4, 1), dt.datetime(2014, 4, 2, tzinfo=dt.UTC)),  # @daily
        ("0 3 * * *", dt.date(2014, 4, 5), dt.datetime(2014, 4, 6, 3, tzinfo=dt.UTC)),  # waits for late files
        ("30 23 * * *", dt.date(2014, 12, 31), dt.datetime(2015, 1, 1, 23, 30, tzinfo=dt.UTC)),
    ],
)
def test_given_a_daily_cron_when_logical_date_then_airflow_infers_the_interval_starting_that_day(cron, day, expected):
    from airflow.sdk import DAG, CronDataIntervalTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable

    timetable = CronDataIntervalTimetable(cron, timezone="UTC")
    dag = DAG("daily", schedule=timetable, start_date=dt.datetime(2014, 1, 1, tzinfo=dt.UTC))
    logical = logical_date(dag, day)
    interval = coerce_to_core_timetable(timetable).infer_manual_data_interval(run_after=logical)  # what dag.test does
    assert (logical, interval.start.date(), covered_day(logical)) == (expected, day, day)


def test_given_the_nightly_dag_when_logical_date_then_the_end_of_the_day_s_interval():
    assert logical_date(load_dag("clickstream_nightly"), dt.date(2014, 4, 1)) == dt.datetime(2014, 4, 2, tzinfo=dt.UTC)


def test_given_a_dag_without_a_cron_when_logical_date_then_midnight_after_the_day():
    logical = logical_date(load_dag("clickstream_backfill"), dt.date(2014, 4, 1))
    assert logical == dt.datetime(2014, 4, 2, tzinfo=dt.UTC)
    assert covered_day(logical) == dt.date(2014, 4, 1)


def test_given_a_dag_id_when_loaded_then_the_dag_of_its_file_else_one_line_error():
    assert load_dag("clickstream_rescore").dag_id == "clickstream_rescore"  # defined in clickstream_backfill.py
    with pytest.raises(ClickstreamError, match="no DAG clickstream_nope in"):
        load_dag("clickstream_nope")


# ---- an in-process run: task logs, times, finished runs --------------------------------------------
@pytest.fixture(scope="module")
def empty_day_run(tmp_path_factory: pytest.TempPathFactory):
    """clickstream_nightly run in this process for a day without landing files (every task skips), and
    the moment before it began."""
    root = tmp_path_factory.mktemp("empty-day")
    settings = load_settings(lake=str(root / "lake"), home=root / "state", environ={})
    saved = dict(os.environ)
    os.environ.update(clickstream_environ(settings))
    try:
        init_metadata()
        began = dt.datetime.now(dt.UTC)
        yield began, run_dag_for_day("clickstream_nightly", EMPTY_DAY)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _log_lines(dag_id: str, run_id: str, task_id: str) -> list[dict]:
    ti = SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1, try_number=1)
    return [json.loads(line) for line in task_log_path(ti).read_text().splitlines()]


@pytest.mark.slow
def test_given_an_in_process_run_then_each_task_log_is_where_the_ui_reads_it_with_the_skip_reason(empty_day_run):
    from airflow.configuration import conf

    _, result = empty_day_run
    ti = SimpleNamespace(dag_id=result.dag_id, run_id=result.run_id, task_id="find_landing", map_index=-1, try_number=1)
    assert task_log_path(ti).is_relative_to(Path(conf.get("logging", "base_log_folder")))
    reason = result.skipped["find_landing"]
    assert reason.startswith(f"no landing files for {EMPTY_DAY}")
    lines = _log_lines(result.dag_id, result.run_id, "find_landing")
    ours = next(line for line in lines if line["event"] == f"skipped: {reason}")
    assert (ours["level"], ours["logger"]) == ("warning", "clickstream.pipeline.orchestrate.nightly")
    assert any(line["event"] == "Skipping task." and line.get("reason") == reason for line in lines)  # Airflow's own
    assert all(dt.datetime.fromisoformat(line["timestamp"]) for line in lines)


@pytest.mark.slow
def test_given_an_in_process_run_then_its_task_lines_stay_off_the_console(tmp_path, capfd):
    settings = load_settings(lake=str(tmp_path / "lake"), home=tmp_path / "state", environ={})
    saved = dict(os.environ)
    os.environ.update(clickstream_environ(settings))
    try:
        init_metadata()
        capfd.readouterr()
        result = run_dag_for_day("clickstream_nightly", EMPTY_DAY - dt.timedelta(days=1))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    printed = capfd.readouterr()
    assert result.skipped["find_landing"] not in printed.out + printed.err  # in the task's log only


@pytest.mark.slow
def test_given_an_in_process_run_then_airflow_records_its_real_start_and_end_and_reads_it_back(empty_day_run):
    began, result = empty_day_run
    runs = json.loads(airflow_cli("dags", "list-runs", "clickstream_nightly", "--output", "json"))
    (run,) = [r for r in runs if r["run_id"] == result.run_id]
    start, end = dt.datetime.fromisoformat(run["start_date"]), dt.datetime.fromisoformat(run["end_date"])
    assert began <= start <= end <= dt.datetime.now(dt.UTC)  # not the 2014 logical date
    assert end - start < dt.timedelta(minutes=10)
    finished = finished_runs("clickstream_nightly")[EMPTY_DAY]
    assert (finished.run_id, finished.state, finished.tasks) == (result.run_id, "success", result.tasks)
    assert set(result.tasks.values()) == {"skipped"}
