"""Settings from the environment and flags: a malformed value is one line naming the variable
and its accepted range; help texts keep their bracketed defaults and name the variables."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cli_process import run_cli
from typer.testing import CliRunner

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.core.errors import SettingError
from clickstream.pipeline.orchestrate.cli import app

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("ingest", "sequences", "train", "score", "scores", "sql", "session", "report", "demo")  # generate: no lake


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("CLICKSTREAM_BAD_ROW_THRESHOLD", "abc", "a number >= 0 and <= 1"),
        ("CLICKSTREAM_BAD_ROW_THRESHOLD", "2", "a number >= 0 and <= 1"),
        ("CLICKSTREAM_BAD_ROW_THRESHOLD", "-0.1", "a number >= 0 and <= 1"),
        ("CLICKSTREAM_BAD_ROW_THRESHOLD", "nan", "a number >= 0 and <= 1"),
        ("CLICKSTREAM_SQL_TIMEOUT_S", "0", "a number > 0 and <= 3600"),
        ("CLICKSTREAM_SQL_TIMEOUT_S", "inf", "a number > 0 and <= 3600"),
        ("CLICKSTREAM_SQL_TIMEOUT_S", "1e308", "a number > 0 and <= 3600"),
        ("CLICKSTREAM_SQL_TIMEOUT_S", "1e10", "a number > 0 and <= 3600"),
        ("CLICKSTREAM_SQL_TIMEOUT_S", "1m", "a number > 0 and <= 3600"),
        ("CLICKSTREAM_SQL_MEMORY_MB", "1.5", "an integer >= 64 and <= 1048576"),
        ("CLICKSTREAM_SQL_MEMORY_MB", "8", "an integer >= 64 and <= 1048576"),
        ("CLICKSTREAM_SQL_MEMORY_MB", "99999999999999", "an integer >= 64 and <= 1048576"),
        ("CLICKSTREAM_TRAIN_CPU_THREADS", "0", "an integer >= 1"),
        ("CLICKSTREAM_PROMOTION_MARGIN", "1", "a number >= 0 and < 1"),
        ("CLICKSTREAM_PROMOTION_MARGIN", "-0.01", "a number >= 0 and < 1"),
    ],
)
def test_given_a_malformed_environment_value_then_one_line_naming_the_variable_and_range(
    tmp_path: Path, name: str, value: str, accepted: str
) -> None:
    with pytest.raises(SettingError) as error:
        load_settings(lake=str(tmp_path / "lake"), environ={name: value})

    message = str(error.value)
    assert message.startswith(f"{name}={value!r}") and message.endswith(f"expected {accepted}")
    assert "\n" not in message


def test_given_valid_environment_values_then_they_are_used(tmp_path: Path) -> None:
    settings = load_settings(
        lake=str(tmp_path / "lake"),
        environ={
            "CLICKSTREAM_BAD_ROW_THRESHOLD": " 1 ",
            "CLICKSTREAM_SQL_TIMEOUT_S": "2.5",
            "CLICKSTREAM_SQL_MEMORY_MB": "512",
            "CLICKSTREAM_TRAIN_CPU_THREADS": "2",
        },
    )

    assert (settings.bad_row_threshold, settings.sql_timeout_s, settings.sql_memory_mb) == (1.0, 2.5, 512)
    assert settings.train.cpu_threads == 2


def test_given_a_malformed_environment_value_on_the_command_line_then_exit_2(tmp_path: Path) -> None:
    env = {"CLICKSTREAM_BAD_ROW_THRESHOLD": "abc"}
    done = run_cli("scores", "--lake", str(tmp_path / "lake"), cwd=tmp_path, env=env)

    assert done.code == 2 and "CLICKSTREAM_BAD_ROW_THRESHOLD='abc'" in done.error_line


@pytest.mark.parametrize("origin", ["--lake", "CLICKSTREAM_LAKE"])
def test_given_a_file_as_the_lake_then_one_line_naming_it_and_where_it_came_from(tmp_path: Path, origin: str) -> None:
    not_a_folder = tmp_path / "lake.parquet"
    not_a_folder.write_bytes(b"PAR1")
    args = ["--lake", str(not_a_folder)] if origin == "--lake" else []
    env = {"CLICKSTREAM_LAKE": str(not_a_folder)} if origin == "CLICKSTREAM_LAKE" else {}

    done = run_cli("sql", "SELECT 1", *args, cwd=tmp_path, env=env)

    assert done.code == 2
    assert done.error_line == f"error: lake root {not_a_folder} ({origin}) is not a folder"


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_given_any_command_then_its_help_keeps_the_bracketed_environment_and_default(command: str) -> None:
    assert "[env CLICKSTREAM_LAKE, default ./lake]" in _help(command)


def test_given_the_sql_help_then_its_limits_name_their_variables_and_defaults() -> None:
    text = _help("sql")

    assert "[env CLICKSTREAM_SQL_TIMEOUT_S, default 60]" in text
    assert "[env CLICKSTREAM_SQL_MEMORY_MB, default 2048]" in text
    for table in ("events", "sequences", "scores", "cookie_intent", "quarantine"):
        assert table in text


@pytest.mark.parametrize("command", ["train", "score", "session"])
def test_given_a_command_that_reads_the_tracking_store_then_its_help_names_the_variable(command: str) -> None:
    assert "MLFLOW_TRACKING_URI" in _help(command)


def test_given_an_unknown_dev_command_then_only_the_usage_and_exit_2() -> None:
    done = subprocess.run([str(REPO / "dev"), "no-such-command"], capture_output=True, text=True, timeout=60)
    usage = subprocess.run([str(REPO / "dev"), "help"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and done.stdout == "" and done.stderr == usage.stdout
    assert usage.returncode == 0
    lines = usage.stdout.splitlines()
    assert all(re.match(r"^(  \./dev \S+|One entry point)", line) for line in lines), lines
    assert any("./dev clickstream ARGS..." in line for line in lines)
