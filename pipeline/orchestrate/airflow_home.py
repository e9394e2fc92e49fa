"""The embedded Airflow: its state under <CLICKSTREAM_HOME>/airflow (SQLite metadata DB, task logs
in its logs/), this repository's dags/ folder, no example DAGs, the `gpu` pool, every server on
127.0.0.1; plus running a DAG for one day in-process (what `clickstream demo` and the end-to-end
tests do).

The metadata DB and the pool are set up through Airflow's CLI (`airflow db migrate`, `airflow pools
set`), and finished runs are read back through it too (`airflow dags list-runs`). Airflow reads its
configuration once, when first imported, so `prepare_airflow` sets the environment before anything
imports it. In a process that already imported Airflow (a test session), the configuration in place
is kept and only the clickstream variables are set.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.orchestrate.nightly import NIGHTLY, SKIP_REASON

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
LOCALHOST = "127.0.0.1"
# An embedded Airflow logs warnings up, but a task's runner and operator (`task`, `airflow.task`) INFO up: the
# lines of the task logs, which stay off the console (TaskLogs); libraries' deprecation notes (`py.warnings`) not
LOG_LEVELS = {
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "task=INFO airflow.task=INFO py.warnings=ERROR",
}


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
    """The environment of the embedded Airflow (default home: settings.home/airflow, SQLite DB and
    logs/ inside it), for this process and for the `airflow api-server` that opens its UI: the API
    server (UI) and the scheduler's health check, when enabled, listen on 127.0.0.1 only."""
    return {
        "AIRFLOW_HOME": str(airflow_home or Path(settings.home) / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": LOCALHOST,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOCALHOST,
        **clickstream_environ(settings),
    }


def prepare_airflow(settings: Settings) -> Path:
    """Point this process's Airflow at settings.home/airflow (unless Airflow is already imported),
    create or migrate its metadata DB and the `gpu` pool; returns the AIRFLOW_HOME in use.
    Idempotent: a second call on the same state changes nothing. Before Airflow is imported, it
    also sets LOG_LEVELS where the environment does not."""
    environ = airflow_environ(settings)
    if "airflow" in sys.modules:
        environ = clickstream_environ(settings)
    else:
        Path(environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        environ |= {name: os.environ.get(name, value) for name, value in LOG_LEVELS.items()}
        logging.getLogger("clickstream").setLevel(logging.INFO)  # for the task logs; the console keeps its level
    os.environ.update(environ)
    init_metadata()
    from airflow.configuration import AIRFLOW_HOME

    return Path(AIRFLOW_HOME)


def init_metadata() -> None:
    """Create or migrate the configured Airflow metadata DB and the training pool, with Airflow's own
    CLI as an operator would. Idempotent."""
    airflow_cli("db", "migrate")
    description = "trainings that may run at once (one per GPU)"
    airflow_cli("pools", "set", NIGHTLY.gpu_pool, str(NIGHTLY.gpu_pool_slots), description)


def airflow_cli(*args: str) -> str:
    """`airflow ARGS` in a child process with this process's environment (its log at ERROR); the last
    line of its output (where `--output json` puts the JSON), or ClickstreamError with its last error line."""
    environ = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=environ)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise ClickstreamError(f"airflow {' '.join(args[:2])} failed: {said}")
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class DagRunResult:
    """How one DAG run ended: the run's state, each task's final state and, for a run made by this
    process, the reason each skipped task gave (`nightly.skip`)."""

    dag_id: str
    run_id: str
    day: dt.date
    state: str
    tasks: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"


def run_dag_for_day(dag_id: str, day: dt.date, conf: dict[str, Any] | None = None) -> DagRunResult:
    """Run `dag_id` in-process (`dag.test`) for the data interval that starts on `day`, as the
    scheduler would; `conf` sets DAG params. Call `prepare_airflow` first. Re-running a day replaces
    its DAG run with a new one. Each task's log goes to the file the UI reads (`task_logs`), and the
    run records when it really started (`_RunStart`)."""
    from airflow.listeners.listener import get_listener_manager

    dag = load_dag(dag_id)
    dag.deadline = None  # as under `airflow dags test`: see nightly.late_run_deadline
    with task_logs() as logs, _listening(get_listener_manager(), _RunStart()):
        run = dag.test(logical_date=logical_date(dag, day), run_conf=conf)
    tasks = {_name(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    return _result(dag_id, run.run_id, day, run.state, tasks, logs.skipped)


def load_dag(dag_id: str) -> Any:
    """The DAG `dag_id` as a file of DAGS_FOLDER defines it (each names its DAGs at module level)."""
    from airflow.sdk import DAG

    for path in sorted(DAGS_FOLDER.glob("*.py")):
        for value in runpy.run_path(str(path)).values():
            if isinstance(value, DAG) and value.dag_id == dag_id:
                return value
    raise ClickstreamError(f"no DAG {dag_id} in {DAGS_FOLDER}")


def logical_date(dag: Any, day: dt.date) -> dt.datetime:
    """The logical date that makes dag.test run the data interval starting on `day`: Airflow takes a
    manual run's interval as the last complete one before its logical date, so the end of that one,
    the first tick of the DAG's (daily) cron on the next day; midnight after `day` for another schedule."""
    from airflow.sdk import CronDataIntervalTimetable
    from croniter import croniter

    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    if not isinstance(dag.timetable, CronDataIntervalTimetable):
        return midnight
    return croniter(dag.timetable.expression, midnight - dt.timedelta(microseconds=1)).get_next(dt.datetime)


def covered_day(logical: dt.datetime) -> dt.date:
    """The day a run made by `run_dag_for_day` covers, from its logical date (`logical_date`'s inverse)."""
    return (logical - dt.timedelta(days=1)).date()


def finished_runs(dag_id: str) -> dict[dt.date, DagRunResult]:
    """The successful runs of `dag_id` in the metadata DB, by the day each covers, read with Airflow's CLI
    (`airflow dags list-runs`, `airflow tasks states-for-dag-run`): like the scheduler, `clickstream demo`
    does not run a finished interval again. None before the DAG was first run."""
    try:
        runs = json.loads(airflow_cli("dags", "list-runs", dag_id, "--state", "success", "--output", "json"))
    except ClickstreamError as error:
        if "does not exist" in str(error):  # the DAG never ran here: not in the metadata DB yet
            return {}
        raise
    with ThreadPoolExecutor() as pool:  # one CLI process per run, side by side
        results = list(pool.map(lambda run: _finished(dag_id, run), runs))
    return {result.day: result for result in results}


def _finished(dag_id: str, run: dict[str, str]) -> DagRunResult:
    states = json.loads(airflow_cli("tasks", "states-for-dag-run", dag_id, run["run_id"], "--output", "json"))
    tasks = {_name(s["task_id"], int(s.get("map_index") or -1)): s["state"] for s in states}
    day = covered_day(dt.datetime.fromisoformat(run["logical_date"]))
    return _result(dag_id, run["run_id"], day, run["state"], tasks)


def _name(task_id: str, map_index: int) -> str:
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


def _result(
    dag_id: str, run_id: str, day: dt.date, state: Any, tasks: dict[str, Any], skipped: dict[str, str] | None = None
) -> DagRunResult:
    return DagRunResult(dag_id, run_id, day, str(state), {k: str(v) for k, v in sorted(tasks.items())}, skipped or {})


class _RunStart:
    """An Airflow listener that gives a finished dag.test run its real start: dag.test records the run's
    logical date as its start, years back for the demo's days, and the UI's run duration would span
    them; the run's `run_after` is when dag.test began it."""

    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        dag_run.start_date = dag_run.run_after

    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        dag_run.start_date = dag_run.run_after


@contextlib.contextmanager
def _listening(manager: Any, listener: Any) -> Iterator[None]:
    """`listener` registered with Airflow's listener `manager` meanwhile, its `on_*` methods as hooks."""
    from airflow.listeners import hookimpl

    for name in dir(listener):
        if name.startswith("on_"):
            hookimpl(getattr(type(listener), name))
    manager.add_listener(listener)
    try:
        yield
    finally:
        manager.pm.unregister(listener)


# ---- task logs of in-process runs --------------------------------------------------------------
def task_log_path(task_instance: Any) -> Path:
    """The file where Airflow's UI and log server read the log of `task_instance`'s try (anything with
    its dag_id, run_id, task_id, map_index and try_number): `[logging] log_filename_template` under
    `[logging] base_log_folder`, as a worker writes it."""
    import jinja2
    from airflow.configuration import conf

    template = jinja2.Template(conf.get("logging", "log_filename_template"))
    name = template.render(ti=task_instance, try_number=task_instance.try_number)
    return Path(conf.get("logging", "base_log_folder")) / name


class TaskLogs(logging.Handler):
    """Each task's log where Airflow's UI reads it: dag.test (Airflow 3.3) runs tasks in this process and
    only prints their lines, where a worker writes them to `<[logging] base_log_folder>/<log_filename_template>`.
    While a task runs (between the `_TaskWindow` hooks), its lines, stdlib and structlog, go to that file as
    JSON lines, and those below ERROR stay off the console, as on a worker. Keeps each skipped task's
    reason (the SKIP_REASON of `nightly.skip`'s record)."""

    def __init__(self) -> None:
        super().__init__()
        self.file: IO[str] | None = None
        self.task = ""
        self.skipped: dict[str, str] = {}
        self.console: tuple[IO[str], IO[str]] | None = None

    def open(self, task_instance: Any) -> None:
        """Start writing `task_instance`'s log to the file Airflow names for its try."""
        path = task_log_path(task_instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.close_file()
        self.file = path.open("a", encoding="utf-8")
        self.task = _name(task_instance.task_id, task_instance.map_index)
        self.console = sys.stdout, sys.stderr  # what the task prints goes to its log, as on a worker
        sys.stdout, sys.stderr = _Printed(self, "stdout", sys.stdout), _Printed(self, "stderr", sys.stderr)

    def close_file(self) -> None:
        if self.console is not None:
            sys.stdout, sys.stderr = self.console
            self.console = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def write(self, event: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(event, default=str) + "\n")
            self.file.flush()

    def line(self, level: str, logger: str, event: str, at: dt.datetime | None = None) -> None:
        """One log line as a worker writes it (Airflow's JSON fields)."""
        stamp = (at or dt.datetime.now(dt.UTC)).isoformat()
        self.write({"timestamp": stamp, "level": level, "logger": logger, "event": event})

    def emit(self, record: logging.LogRecord) -> None:
        """A stdlib record, while a task runs."""
        if self.file is None:
            return
        if reason := getattr(record, SKIP_REASON, None):
            self.skipped[self.task] = reason
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        at = dt.datetime.fromtimestamp(record.created, dt.UTC)
        self.line(record.levelname.lower(), record.name, message, at)

    def tee(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        """structlog processor (before the console renderer): a task's event to its file and, below ERROR,
        off the console, like every line of the task runner's logger (`task`: its last comes after the end)."""
        import structlog

        if self.file is not None:
            self.write(structlog.processors.format_exc_info(logger, method_name, dict(event_dict)))
        ours = self.file is not None or event_dict.get("logger") == "task"
        if ours and _level(event_dict.get("level", method_name)) < logging.ERROR:
            raise structlog.DropEvent
        return event_dict

    def console_filter(self, record: logging.LogRecord) -> bool:
        """Filter for the console's handlers: while a task runs, only its errors."""
        return self.file is None or record.levelno >= logging.ERROR


class _Printed(io.TextIOBase):
    """sys.stdout or sys.stderr while a task runs: its text to the task's log (logger `task.stdout` or
    `task.stderr`, like a worker's), or to the `console` once no task runs (a logger may hold on to it)."""

    def __init__(self, logs: TaskLogs, name: str, console: IO[str]) -> None:
        self.logs, self.name, self.console = logs, name, console

    def write(self, text: str) -> int:
        if self.logs.file is None:
            return self.console.write(text)
        if text.strip():
            self.logs.line("info", f"task.{self.name}", text.rstrip())
        return len(text)

    def flush(self) -> None:
        self.console.flush()


def _level(name: Any) -> int:
    return logging.getLevelNamesMapping().get(str(name).upper(), logging.ERROR)


class _TaskWindow:
    """An Airflow listener that opens and closes `logs`' file as a task starts and ends: Airflow calls it
    in the process that runs the task (here, under dag.test)."""

    def __init__(self, logs: TaskLogs) -> None:
        self.logs = logs

    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self.logs.open(task_instance)

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self.logs.close_file()

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self.logs.close_file()

    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self.logs.close_file()


@contextlib.contextmanager
def task_logs() -> Iterator[TaskLogs]:
    """A TaskLogs in place for the tasks this process runs meanwhile: its `_TaskWindow` listening to
    Airflow's task runner, itself a root logging handler and a structlog processor, and its filter on the
    console's handlers."""
    import structlog
    from airflow.sdk.listener import get_listener_manager

    logs = TaskLogs()
    root = logging.getLogger()
    console = list(root.handlers)
    processors = structlog.get_config()["processors"]
    root.addHandler(logs)
    for handler in console:
        handler.addFilter(logs.console_filter)
    structlog.configure(processors=[*processors[:-1], logs.tee, processors[-1]])
    try:
        with _listening(get_listener_manager(), _TaskWindow(logs)):
            yield logs
    finally:
        structlog.configure(processors=processors)
        for handler in console:
            handler.removeFilter(logs.console_filter)
        root.removeHandler(logs)
        logs.close_file()
