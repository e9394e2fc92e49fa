"""The embedded Airflow: its environment round-trips the settings, and preparing it creates the
metadata DB and the gpu pool without moving an Airflow that is already configured."""

from __future__ import annotations

import os
from pathlib import Path

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate.airflow_home import (
    DAGS_FOLDER,
    airflow_environ,
    clickstream_environ,
    prepare_airflow,
)
from clickstream.pipeline.orchestrate.nightly import NIGHTLY


def test_given_settings_when_airflow_environ_then_state_under_home_repo_dags_no_examples_localhost(settings):
    environ = airflow_environ(settings)
    assert environ["AIRFLOW_HOME"] == str(Path(settings.home) / "airflow")
    assert environ["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert (DAGS_FOLDER / "clickstream_nightly.py").exists()
    assert environ["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert environ["AIRFLOW__API__HOST"] == "127.0.0.1"


def test_given_settings_when_a_task_reloads_them_from_the_environment_then_they_are_the_same(settings):
    assert load_settings(environ=clickstream_environ(settings)) == settings


def test_given_airflow_already_imported_when_prepare_airflow_then_home_kept_and_gpu_pool_created(
    settings, monkeypatch
):
    from airflow.configuration import AIRFLOW_HOME
    from airflow.models.pool import Pool

    for name in clickstream_environ(settings):
        monkeypatch.delenv(name, raising=False)
    home = prepare_airflow(settings)
    assert home == Path(AIRFLOW_HOME) != Path(settings.home) / "airflow"
    assert os.environ["CLICKSTREAM_LAKE"] == settings.lake
    assert Pool.get_pool(NIGHTLY.gpu_pool).slots == NIGHTLY.gpu_pool_slots
    assert prepare_airflow(settings) == home  # idempotent
