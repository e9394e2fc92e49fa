"""`clickstream demo`: the main job end to end on the embedded defaults, through the Airflow DAG.

Generates `days` days of YOOCHOOSE-format landing data (one folder per UTC day, same seed so
the same bytes), runs `clickstream_nightly` in-process for each day in order (as the scheduler
would, one run per data interval), and ends with a short report plus the commands that open the
Airflow and MLflow UIs on the same state. Like the scheduler, it never runs a day whose nightly
run already succeeded, so running it again on the same state changes nothing and only reports
(a failed day is run again: every step is idempotent).

The first days have too little history to validate a model (validation_days + 1 days are
needed), so their runs skip training and scoring with that reason; later days train, promote and
score. After a promotion the demo runs clickstream_rescore, as the scheduler does on the
`clickstream-champion` Asset, so the first days get scores too. The last day, once an earlier one
could train, is held out: its run has param `train` false, so the champion scores it without
having trained on it, and the report's live figures (after the champion's window) come from it.

Its console carries progress and errors; each task's log is in the Airflow home's logs/ (the
UI's Logs tab), and a skipped task's reason is printed as one line of progress.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from clickstream.models.registry.store import alias_version, model_version, run_metrics
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.tracking import redacted
from clickstream.pipeline.orchestrate.airflow_home import (
    LOCALHOST,
    DagRunResult,
    airflow_environ,
    finished_runs,
    prepare_airflow,
    run_dag_for_day,
)
from clickstream.pipeline.serve.analytics import query_scores
from clickstream.pipeline.synthetic.generate import generate_logs

DEMO_START = dt.date(2014, 4, 1)  # inside the YOOCHOOSE period
DEMO_SEED = 0
AIRFLOW_PORT = 8080
# How a progress line words a skipped task (its reason follows in brackets)
SKIPPED = {
    "find_landing": "nothing to ingest",
    "train": "nothing new to train",
    "announce_champion": "no new champion",
    "score": "nothing scored",
}


@dataclass(frozen=True)
class DemoDay:
    """One nightly run of the demo and what it left in the lake for its day."""

    day: dt.date
    tasks: dict[str, str]
    events: int
    sessions: int
    quarantined: int


@dataclass(frozen=True)
class DemoReport:
    """The demo's outcome; `str()` is the short report printed at the end."""

    days: tuple[DemoDay, ...]
    champion: str | None
    lstm_auc: float
    gbm_auc: float
    top_sessions: str
    airflow_ui: str
    mlflow_ui: str
    seconds: float
    held_out: dt.date | None = None
    task_logs: str = ""

    def __str__(self) -> str:
        rows = [f"{'day':<12}{'events':>10}{'sessions':>10}{'quarantined':>13}  nightly run"]
        rows += [
            f"{d.day.isoformat():<12}{d.events:>10,}{d.sessions:>10,}{d.quarantined:>13,}  {_run_status(d.tasks)}"
            for d in self.days
        ]
        champion = f"v{self.champion}" if self.champion else "none yet"
        return "\n".join(
            [
                f"clickstream demo: {len(self.days)} days through clickstream_nightly in {self.seconds:.0f} s",
                "",
                *rows,
                "",
                f"champion: {champion}; validation AUC LSTM {self.lstm_auc:.4f} vs GBM baseline {self.gbm_auc:.4f}",
                *_held_out_lines(self.held_out),
                "",
                "top 10 scored sessions (latest scored day):",
                self.top_sessions,
                "",
                f"Airflow UI (http://{LOCALHOST}:{AIRFLOW_PORT}; user admin, its password in the file",
                "simple_auth_manager_passwords.json.generated of AIRFLOW_HOME once it runs; every DAG paused):",
                f"  {self.airflow_ui}",
                f"  task logs: {self.task_logs}",
                f"MLflow UI (http://{LOCALHOST}:5000):",
                f"  {self.mlflow_ui}",
            ]
        )


def _held_out_lines(day: dt.date | None) -> list[str]:
    if day is None:
        return []
    return [f"{day} was scored by the champion but not trained on: the report's live figures come from it"]


def run_demo(settings: Settings, *, days: int = 5, sessions_per_day: int = 4_000) -> DemoReport:
    """Generate `days` landing days from DEMO_START, run clickstream_nightly for each in date
    order (skipping days whose run already succeeded; the last one held out of training) and report.
    Idempotent: a second run on the same state runs nothing again and reports the same days and
    champion. Progress, skip reasons and errors go to stderr (each task's log to the Airflow home's
    logs/), so stdout holds only the report.
    Raises ClickstreamError naming the day and task when a nightly run fails."""
    with contextlib.redirect_stdout(sys.stderr):
        return _run_demo(settings, days, sessions_per_day)


def _run_demo(settings: Settings, days: int, sessions_per_day: int) -> DemoReport:
    began = time.perf_counter()
    _say(f"preparing the embedded Airflow under {settings.home}")
    airflow_home = prepare_airflow(settings)
    _quiet_console()
    _say(f"generating {days} days x {sessions_per_day:,} sessions of landing data in {settings.landing}")
    generate_logs(
        Path(settings.landing),
        sessions=days * sessions_per_day,
        days=days,
        start_date=DEMO_START,
        seed=DEMO_SEED,
        by_day=True,
    )
    dates = [DEMO_START + dt.timedelta(days=i) for i in range(days)]
    held_out = dates[-1] if days > settings.train.validation_days + 1 else None  # an earlier day can train
    finished = finished_runs("clickstream_nightly")
    results = [_nightly(day, f"[{i + 1}/{days}]", finished, None) for i, day in enumerate(dates) if day != held_out]
    if any(r.tasks.get("announce_champion") == "success" for r in results if r.day not in finished):
        # what the scheduler does on the `clickstream-champion` Asset: re-score the recent days
        _say("a new champion was published: clickstream_rescore re-scores the recent days ...")
        rescored = run_dag_for_day("clickstream_rescore", results[-1].day)
        _say(f"clickstream_rescore: {_run_status(rescored.tasks)}")
    if held_out is not None:
        results.append(_nightly(held_out, f"[{days}/{days}]", finished, {"train": False}))

    airflow_ui, mlflow_ui = ui_commands(settings, airflow_home)
    champion, lstm_auc, gbm_auc = _champion_metrics(settings)
    return DemoReport(
        days=tuple(_demo_day(settings, r.day, r.tasks) for r in results),
        champion=champion,
        lstm_auc=lstm_auc,
        gbm_auc=gbm_auc,
        top_sessions=_top_sessions(settings),
        airflow_ui=airflow_ui,
        mlflow_ui=mlflow_ui,
        seconds=time.perf_counter() - began,
        held_out=held_out,
        task_logs=str(airflow_home / "logs"),
    )


def _nightly(
    day: dt.date, step: str, finished: dict[dt.date, DagRunResult], conf: dict[str, bool] | None
) -> DagRunResult:
    """clickstream_nightly for `day` (params `conf`) unless its run already succeeded, with its progress
    lines; ClickstreamError naming the day and the failed tasks when the run fails."""
    if day in finished:
        _say(f"{step} {day} already done (as the scheduler, not run again)")
        return finished[day]
    _say(f"{step} clickstream_nightly for {day} ...")
    result = run_dag_for_day("clickstream_nightly", day, conf)
    _say(f"{step} {day}: {_run_status(result.tasks)}")
    for line in skip_lines(result):
        _say(line)
    if not result.succeeded:
        failed = ", ".join(t for t, s in result.tasks.items() if s in {"failed", "upstream_failed"})
        raise ClickstreamError(
            f"clickstream_nightly failed for {day} (tasks: {failed}); their logs are in the Airflow UI "
            "or the Airflow home's logs/ folder"
        )
    return result


def skip_lines(result: DagRunResult) -> list[str]:
    """One line per skipped task that gave a reason (a mapped task's instances once per reason), in the
    order they ran, e.g. `2014-04-01: nothing new to train (training needs 3 days of sequences ...)`."""
    reasons = dict.fromkeys((task.partition("[")[0], reason) for task, reason in result.skipped.items())
    return [f"{result.day}: {SKIPPED.get(task, f'{task} skipped')} ({reason})" for task, reason in reasons]


def _quiet_console() -> None:
    """Keep dag.test's note while it waits for a task to become ready ("No tasks to run. unrunnable
    tasks", on every skipped night: it reads like an error) off the demo's console."""
    logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.ERROR)


def ui_commands(settings: Settings, airflow_home: Path) -> tuple[str, str]:
    """The shell commands that open the Airflow and the MLflow UI, both bound to 127.0.0.1: Airflow's
    API server alone, which serves the UI and reads the task logs from AIRFLOW_HOME/logs (`airflow
    standalone` would also start log servers that listen on every interface). A value holding
    credentials (user:password@ in a URI) is printed as a reference to its environment variable, so
    the report never shows a password."""
    environ = airflow_environ(settings, airflow_home)
    airflow = " ".join(f"{k}={_shell_value(k, v)}" for k, v in environ.items())
    store = _shell_value("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return (
        f"{airflow} airflow api-server --host {LOCALHOST} --port {AIRFLOW_PORT}",
        f"mlflow ui --backend-store-uri {store} --host {LOCALHOST} --port 5000",
    )


def _shell_value(name: str, value: str) -> str:
    return shlex.quote(value) if redacted(value) == value else f'"${name}"'


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_status(tasks: dict[str, str]) -> str:
    """`skipped: train, score` style (the tasks that did not succeed, by state), else `all tasks succeeded`."""
    by_state: dict[str, list[str]] = {}
    for task, state in tasks.items():
        if state != "success":
            by_state.setdefault(state, []).append(task)
    return "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items()) or "all tasks succeeded"


def _demo_day(settings: Settings, day: dt.date, tasks: dict[str, str]) -> DemoDay:
    lake = Lake(settings.lake, settings.buckets)

    def rows(table: str) -> int:
        frame = lake.scan(table, day, day)
        return 0 if frame is None else int(frame.select("date").collect().height)

    return DemoDay(day, tasks, rows("events"), rows("sequences"), rows("quarantine"))


def _champion_metrics(settings: Settings) -> tuple[str | None, float, float]:
    """The champion version and its run's LSTM and GBM validation AUCs (NaN when unknown)."""
    version = alias_version(settings, CHAMPION)
    if version is None:
        return None, math.nan, math.nan
    run_id = model_version(settings, version).run_id
    metrics = run_metrics(settings, [run_id])[run_id]
    return version, metrics.get("val_auc", math.nan), metrics.get("gbm_val_auc", math.nan)


def _top_sessions(settings: Settings) -> str:
    try:
        top = query_scores(settings, None, None, top=10)
    except ClickstreamError as error:
        return f"  (none: {error})"
    columns = ["session_id", "session_start", "n_events", "score", "model_version"]
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_rows=10):
        return str(top.select(columns))
