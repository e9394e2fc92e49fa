"""`clickstream demo`: generated landing days through the nightly DAG into a short report, twice."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from pipeline.airflow_home import clickstream_environ
from pipeline.demo import DEMO_START, DemoDay, DemoReport, run_demo


@pytest.fixture
def isolated_environ(settings, monkeypatch):
    """run_demo exports the clickstream variables for its tasks: undo that after the test."""
    for name in clickstream_environ(settings):
        monkeypatch.delenv(name, raising=False)
    return settings


@pytest.mark.slow
def test_given_a_fresh_state_when_the_demo_runs_twice_then_both_report_the_same_days_and_champion(isolated_environ):
    from models.registry import tracking_client

    settings = isolated_environ
    first = run_demo(settings, days=3, sessions_per_day=500)
    versions = len(tracking_client(settings).search_model_versions(f"name='{settings.model_name}'"))
    second = run_demo(settings, days=3, sessions_per_day=500)

    assert [d.day for d in first.days] == [DEMO_START + dt.timedelta(days=i) for i in range(3)]
    assert all(d.events > 0 and d.sessions > 0 for d in first.days)
    assert first.days[0].tasks["train"] == "skipped"  # too little history on the first day
    assert first.days[-1].tasks["score"] == "success"
    assert first.champion is not None and not math.isnan(first.lstm_auc) and not math.isnan(first.gbm_auc)
    assert [(d.events, d.sessions, d.quarantined) for d in second.days] == [
        (d.events, d.sessions, d.quarantined) for d in first.days
    ]
    assert [d.tasks for d in second.days] == [d.tasks for d in first.days]  # finished days are not re-run
    assert second.champion == first.champion
    assert len(tracking_client(settings).search_model_versions(f"name='{settings.model_name}'")) == versions
    text = str(second)
    assert "airflow standalone" in text and "AIRFLOW__API__HOST=127.0.0.1" in text
    assert f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1" in text
    assert "top 10 scored sessions" in text and "score" in text


def test_given_a_report_when_printed_then_one_row_per_day_champion_aucs_and_ui_commands():
    report = DemoReport(
        days=(
            DemoDay(dt.date(2014, 4, 1), {"train": "skipped", "ingest": "success"}, 1200, 300, 2),
            DemoDay(dt.date(2014, 4, 2), {"train": "success", "ingest": "success"}, 1500, 350, 0),
        ),
        champion="3",
        lstm_auc=0.8123,
        gbm_auc=0.7011,
        top_sessions="(table)",
        airflow_ui="AIRFLOW_HOME=/s/airflow airflow standalone",
        mlflow_ui="mlflow ui --backend-store-uri sqlite:////s/mlflow.db --host 127.0.0.1 --port 5000",
        seconds=42.0,
    )
    text = str(report)
    assert "2014-04-01       1,200       300            2  skipped: train" in text
    assert "2014-04-02       1,500       350            0  all tasks succeeded" in text
    assert "champion: v3; validation AUC LSTM 0.8123 vs GBM baseline 0.7011" in text
    assert "AIRFLOW_HOME=/s/airflow airflow standalone" in text
    assert "--host 127.0.0.1" in text
