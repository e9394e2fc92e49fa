"""What long work shows: a bar on a terminal; elsewhere a logged line each LOG_EVERY_S seconds and
the last one at the end, nothing for quick work or a failure (a fake clock stands in for time); the
CLI's stages show those lines on stderr, with nothing from MLflow's progress bars and INFO logs, nor
its registration notes."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core import progress
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.progress import LOG_EVERY_S, LiveStatus, quiet_libraries, track

LOGGER = "clickstream.pipeline.core.progress"
MLFLOW_NOISE = ("Downloading artifacts", " INFO mlflow", "Successfully registered model", "Created version")


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_off_a_terminal_a_line_comes_each_interval_and_the_last_one_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()

    with LiveStatus("ingest", total=100, unit="files read", stream=io.StringIO(), clock=clock) as status:
        for second in range(95):  # a step a second: 95 steps, 94 seconds
            clock.now = 1000.0 + second
            status.update(rows=(second + 1) * 1000)

    lines = logged(caplog)
    assert len(lines) == 1 + int(94 // LOG_EVERY_S)  # one per interval, then the last
    steps = int(LOG_EVERY_S) + 1  # those taken when the first interval has passed
    assert lines[0].rsplit(", ", 1)[0] == f"ingest: {steps}/100 files read, {steps * 1000:,} rows"
    assert lines[-1] == "ingest: 95/100 files read, 95,000 rows, 01:34"


def test_off_a_terminal_quick_work_logs_nothing_and_a_failure_no_last_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()

    with LiveStatus("train", total=4, unit="batches", stream=io.StringIO(), clock=clock) as status:
        status.update(2, loss=0.25)
        clock.now += LOG_EVERY_S / 2
        status.update(2, loss=0.125)
    assert logged(caplog) == []

    failing = LiveStatus("score", total=90, unit="sessions", stream=io.StringIO(), clock=clock)
    with pytest.raises(RuntimeError), failing as status:
        for _ in range(3):
            clock.now += LOG_EVERY_S
            status.update(10)
        clock.now += LOG_EVERY_S
        raise RuntimeError("the error's own line says where it stopped")
    assert [line.rsplit(", ", 1)[0] for line in logged(caplog)] == [f"score: {n}/90 sessions" for n in (10, 20, 30)]


def test_track_yields_every_item_and_counts_each_once_its_turn_is_done(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line at each step
    seen = []

    for item in track(iter("abc"), "report", unit="days"):
        seen.append((item, len(logged(caplog))))

    assert seen == [("a", 0), ("b", 1), ("c", 2)]
    assert [line.split(",")[0] for line in logged(caplog)] == [f"report: {n} days" for n in (1, 2, 3, 3)]


def test_on_a_terminal_a_bar_is_drawn_and_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    terminal = Terminal()
    clock = Clock()

    with LiveStatus("train", total=5, unit="batches", stream=terminal, clock=clock) as status:
        for _ in range(5):
            clock.now += LOG_EVERY_S  # due for a line, were it a log
            status.update(loss=0.5)

    drawn = terminal.getvalue()
    assert "━" in drawn and "5/5" in drawn and "loss 0.5000" in drawn
    assert logged(caplog) == []


def test_the_library_settings_are_defaults_a_users_own_wins_and_only_the_known_warning_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "")  # so that the teardown removes what is set
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")
    known = "Using `httpx` with `starlette.testclient` is deprecated; install `httpx2` instead."

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries({"ti": "an Airflow context, ignored"})
        for module, text in [("fastapi.testclient", known), ("fastapi.testclient", "another"), ("elsewhere", known)]:
            warnings.warn_explicit(text, UserWarning, "testclient.py", 1, module=module)

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    assert [str(w.message) for w in caught] == ["another", known]


def test_every_task_of_every_dag_quiets_the_libraries_before_it_runs() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))

    assert bag.dags and not bag.import_errors
    assert {
        f"{dag.dag_id}.{task.task_id}": task.on_execute_callback
        for dag in bag.dags.values()
        for task in dag.tasks
        if quiet_libraries not in execute_callbacks(task)
    } == {}


def execute_callbacks(task: Any) -> list[object]:
    """A task's on_execute_callback as a list: Airflow keeps one callable or a list of them."""
    found = task.on_execute_callback
    return found if isinstance(found, list) else [found]


_LOG_ONCE = """
import logging, sys
from clickstream.pipeline.core.progress import log_to_stderr
log_to_stderr()
if sys.argv[1] == "airflow":
    import airflow  # configures its own handlers
log_to_stderr()
logging.getLogger("clickstream.stage").info("a stage line")
logging.getLogger("elsewhere").info("a library's info")
"""


@pytest.mark.parametrize("host", ["cli", "airflow"])
def test_a_stage_line_reaches_the_console_once_alone_or_under_airflow(host: str) -> None:
    done = subprocess.run([sys.executable, "-c", _LOG_ONCE, host], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr  # Airflow's handler writes to stdout
    assert output.count("a stage line") == 1
    if host == "cli":  # Airflow shows other libraries' INFO lines as its settings say
        assert done.stderr.endswith(" INFO a stage line\n") and "a library's info" not in output


def clickstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, stderr a pipe (no terminal), a progress line at each step (the
    interval 0 s), MLflow's own settings left to it."""
    code = (
        "from clickstream.pipeline.core import progress; progress.LOG_EVERY_S = 0.0\n"
        "from clickstream.pipeline.orchestrate.cli import main; main()"
    )
    environ = {k: v for k, v in os.environ.items() if k not in progress.QUIET_LIBRARIES} | env
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environ, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_the_cli_shows_each_stages_progress_on_stderr_off_a_terminal(tmp_path: Path) -> None:
    data, lake = tmp_path / "data", str(tmp_path / "lake")
    env = {"CLICKSTREAM_HOME": str(tmp_path / "home")}
    clickstream("generate", str(data), "--sessions", "300", "--days", "2", env=env)

    clicks, buys = str(data / "yoochoose-clicks.dat"), str(data / "yoochoose-buys.dat")
    ingested = clickstream("ingest", "--format", "yoochoose", clicks, "--buys", buys, "--lake", lake, env=env)
    built = clickstream("sequences", "--lake", lake, env=env)

    assert " INFO ingest: 2/2 files read, " in ingested.stderr
    assert re.search(r" INFO ingest: (\d)/\1 days written, ", ingested.stderr), ingested.stderr
    assert " INFO sequences: " in built.stderr and ", 300 sessions, " in built.stderr
    assert ingested.stdout.startswith("ingested ") and built.stdout.startswith("sequences ")


@pytest.mark.slow
def test_a_training_logs_each_epoch_and_nothing_of_mlflows(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    write_sequences(Lake(lake), synthetic_sequences(sessions=1500, days=3))

    env = {"CLICKSTREAM_HOME": str(tmp_path / "home")}
    trained = clickstream("train", "--epochs", "2", "--device", "cpu", "--lake", lake, env=env)

    assert " INFO train: epoch 1: loss " in trained.stderr and " INFO train: epoch 2: loss " in trained.stderr
    assert re.search(r" INFO train: \d+/\d+ batches, loss ", trained.stderr), trained.stderr
    assert not any(noise in trained.stderr for noise in MLFLOW_NOISE), trained.stderr


def test_scoring_with_a_registered_champion_downloads_it_without_a_bar(
    tmp_path: Path, champion_settings: Settings
) -> None:
    lake = str(tmp_path / "lake")
    write_sequences(Lake(lake), synthetic_sequences(sessions=300, days=2))

    scored = clickstream("score", "--lake", lake, env={"MLFLOW_TRACKING_URI": champion_settings.tracking_uri})

    sessions = int(scored.stdout.split()[1].replace(",", ""))  # "scored N sessions on ..."
    assert f" INFO score: {sessions:,}/{sessions:,} sessions, " in scored.stderr, scored.stderr
    assert not any(noise in scored.stderr for noise in MLFLOW_NOISE), scored.stderr
