"""The embedded Airflow: its state under <CLICKSTREAM_HOME>/airflow (SQLite metadata DB), this
repository's dags/ folder, no example DAGs, and the `gpu` pool; plus running a DAG for one day
in-process (what `clickstream demo` and the end-to-end tests do).

Airflow reads its configuration once, when first imported, so `prepare_airflow` sets the
environment before importing it. In a process that already imported Airflow (a test session),
the configuration in place is kept and only the clickstream variables are set.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.orchestrate.nightly import NIGHTLY, run_day

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


def clickstream_environ(settings: Settings) -> dict[str, str]:
    """The environment variables from which `load_settings()` rebuilds `settings` inside a task."""
    return {
        "CLICKSTREAM_HOME": str(settings.home),
        "CLICKSTREAM_LAKE": settings.lake,
        "CLICKSTREAM_LANDING": settings.landing,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "CLICKSTREAM_BAD_ROW_THRESHOLD": str(settings.bad_row_threshold),
    }


def airflow_environ(settings: Settings, airflow_home: Path | None = None) -> dict[str, str]:
    """The environment of the embedded Airflow (default home: settings.home/airflow, SQLite DB
    inside it), for this process and for the `airflow standalone` that opens its UI on localhost."""
    return {
        "AIRFLOW_HOME": str(airflow_home or Path(settings.home) / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        **clickstream_environ(settings),
    }


def prepare_airflow(settings: Settings) -> Path:
    """Point this process's Airflow at settings.home/airflow (unless Airflow is already imported),
    create or migrate its metadata DB and the `gpu` pool; returns the AIRFLOW_HOME in use.
    Idempotent: a second call on the same state changes nothing."""
    environ = airflow_environ(settings)
    if "airflow" in sys.modules:
        environ = clickstream_environ(settings)
    else:
        Path(environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.update(environ)
    init_metadata()
    from airflow.configuration import AIRFLOW_HOME

    return Path(AIRFLOW_HOME)


def init_metadata() -> None:
    """Create or migrate the configured Airflow metadata DB and the training pool. Idempotent."""
    from airflow.models.pool import Pool
    from airflow.utils.db import initdb

    initdb()
    Pool.create_or_update_pool(
        name=NIGHTLY.gpu_pool,
        slots=NIGHTLY.gpu_pool_slots,
        description="trainings that may run at once (one per GPU)",
        include_deferred=False,
    )


@dataclass(frozen=True)
class DagRunResult:
    """How one in-process DAG run ended: the run's state and each task's final state."""

    dag_id: str
    day: dt.date
    state: str
    tasks: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return self.state == "success"


def run_dag_for_day(dag_id: str, day: dt.date, conf: dict[str, Any] | None = None) -> DagRunResult:
    """Run `dag_id` in-process (`dag.test`) for the data interval that starts on `day`, as the
    scheduler would; `conf` sets DAG params. Call `prepare_airflow` first. Re-running a day clears
    and re-runs its tasks in the same DAG run."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.encoders import coerce_to_core_timetable

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if dag_id not in bag.dags:
        raise RuntimeError(f"DAG {dag_id} not found in {DAGS_FOLDER}: {bag.import_errors}")
    dag = bag.dags[dag_id]
    dag.deadline = None  # as under `airflow dags test`: see nightly.late_run_deadline
    timetable = coerce_to_core_timetable(dag.timetable)
    day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(23, 59, 59), tzinfo=dt.UTC)
    logical_date = timetable.infer_manual_data_interval(run_after=day_end).end  # interval [day.., ..)
    return _result(dag_id, day, dag.test(logical_date=logical_date, run_conf=conf))


def finished_run(dag_id: str, day: dt.date) -> DagRunResult | None:
    """The successful run of `dag_id` whose data interval starts on `day`, if there is one: like
    the scheduler, `clickstream demo` does not run a finished interval again."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState

    for run in DagRun.find(dag_id=dag_id, state=DagRunState.SUCCESS):
        if run.data_interval_start is not None and run_day(run.data_interval_start) == day:
            return _result(dag_id, day, run)
    return None


def _result(dag_id: str, day: dt.date, run: Any) -> DagRunResult:
    tasks = {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
        for ti in run.get_task_instances()
    }
    return DagRunResult(dag_id, day, str(run.state), dict(sorted(tasks.items())))
