"""`clickstream demo`: generated landing days through the nightly DAG into a short report, twice; the
last day scored but held out of training; a console of progress, skip reasons and errors only; UI
commands that listen on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys

import pytest

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.orchestrate.airflow_home import DagRunResult
from clickstream.pipeline.orchestrate.demo import DEMO_START, DemoDay, DemoReport, skip_lines

DAYS = 4  # two too short to train, one trains, the last held out
_RUN_DEMO = f"""
import dataclasses, json, sys
from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate.demo import run_demo
report = run_demo(load_settings(), days={DAYS}, sessions_per_day=500)
print(json.dumps({{**dataclasses.asdict(report), "text": str(report)}}, default=str))
"""


def run_demo_in_a_fresh_process(settings: Settings) -> tuple[dict, str]:
    """The demo as a user runs it: a new process whose Airflow is configured from its own state folder
    (Airflow reads its configuration once, at import, so it cannot move in this test process); its
    report and its console (stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "CLICKSTREAM"))}
    environ |= {"CLICKSTREAM_HOME": str(settings.home), "CLICKSTREAM_LAKE": settings.lake}
    result = subprocess.run([sys.executable, "-c", _RUN_DEMO], env=environ, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow
def test_given_a_fresh_state_when_the_demo_runs_twice_then_both_report_the_same_days_and_champion(settings):
    from clickstream.models.registry.store import tracking_client

    first, console = run_demo_in_a_fresh_process(settings)
    versions = len(tracking_client(settings).search_model_versions(f"name='{settings.model_name}'"))
    second, again = run_demo_in_a_fresh_process(settings)

    assert [d["day"] for d in first["days"]] == [str(DEMO_START + dt.timedelta(days=i)) for i in range(DAYS)]
    assert all(d["events"] > 0 and d["sessions"] > 0 for d in first["days"])
    assert first["days"][0]["tasks"]["train"] == "skipped"  # too little history on the first day
    assert first["days"][-2]["tasks"]["train"] == "success"
    held_out = first["days"][-1]["tasks"]
    assert (held_out["train"], held_out["score[0]"]) == ("skipped", "success")  # scored, not trained on
    assert first["held_out"] == first["days"][-1]["day"]
    assert first["champion"] is not None and not math.isnan(first["lstm_auc"]) and not math.isnan(first["gbm_auc"])
    report = (settings.home / "reports" / f"clickstream-{first['held_out']}.html").read_text()
    assert "Validation: the champion at training time" in report  # the held-out figures of its training run
    assert "Live: the champion after its training window" in report  # the held-out last day, scored after it
    assert "all after its training window" in report and "No scored day after" not in report
    assert [(d["events"], d["sessions"], d["quarantined"]) for d in second["days"]] == [
        (d["events"], d["sessions"], d["quarantined"]) for d in first["days"]
    ]
    assert [d["tasks"] for d in second["days"]] == [d["tasks"] for d in first["days"]]  # finished days not re-run
    assert second["champion"] == first["champion"]
    assert len(tracking_client(settings).search_model_versions(f"name='{settings.model_name}'")) == versions
    text = second["text"]
    assert "airflow api-server --host 127.0.0.1 --port 8080" in text and "AIRFLOW__API__HOST=127.0.0.1" in text
    assert "standalone" not in text  # its log servers would listen on every interface
    assert f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1" in text
    assert "top 10 scored sessions" in text and "score" in text
    assert f"{first['held_out']} was scored by the champion but not trained on" in text
    assert f"{DEMO_START}: nothing new to train (training needs" in console
    assert f"{first['held_out']}: nothing new to train (param train is false" in console
    assert "No tasks to run" not in console and "Traceback" not in console
    assert "skipped: training needs" not in console  # the task's own line is in its log, not here
    assert "already done" in again and "nothing new to train" not in again


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
        airflow_ui="AIRFLOW_HOME=/s/airflow airflow api-server --host 127.0.0.1 --port 8080",
        mlflow_ui="mlflow ui --backend-store-uri sqlite:////s/mlflow.db --host 127.0.0.1 --port 5000",
        seconds=42.0,
        held_out=dt.date(2014, 4, 2),
        task_logs="/s/airflow/logs",
    )
    text = str(report)
    assert "2014-04-01       1,200       300            2  skipped: train" in text
    assert "2014-04-02       1,500       350            0  all tasks succeeded" in text
    assert "champion: v3; validation AUC LSTM 0.8123 vs GBM baseline 0.7011" in text
    assert "2014-04-02 was scored by the champion but not trained on: the report's live figures" in text
    assert "AIRFLOW_HOME=/s/airflow airflow api-server --host 127.0.0.1 --port 8080" in text
    assert "task logs: /s/airflow/logs" in text
    assert "every DAG paused" in text


def test_given_a_run_with_skipped_tasks_then_one_progress_line_per_task_and_reason_in_run_order():
    result = DagRunResult(
        "clickstream_nightly",
        "manual__1",
        dt.date(2014, 4, 1),
        "success",
        {},
        {"train": "training needs 3 days", "score[0]": "no champion yet", "score[1]": "no champion yet", "x": "why"},
    )
    assert skip_lines(result) == [
        "2014-04-01: nothing new to train (training needs 3 days)",
        "2014-04-01: nothing scored (no champion yet)",  # both buckets, once
        "2014-04-01: x skipped (why)",
    ]
