"""The CLI contract: every command has --help and takes --lake; user errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.lake import Lake

COMMANDS = [
    "generate", "ingest", "sequences", "train", "tune", "score", "scores", "sql", "session", "report", "demo",
    "models", "promote", "rollback",
]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_lake_option(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--lake" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sequences", "--start", "2014-13-01"], "--start '2014-13-01' is not a date"),
        (["ingest"], "Missing argument"),
        (["no-such-command"], "No such command"),
        (["generate", "out", "--sessions", "0"], "--sessions"),
        (["generate", "out", "--world", "mars"], "unknown world 'mars'; expected one of default"),
        (["tune", "--trials", "0"], "--trials"),
        (["ingest", "x.csv", "--format", "xml"], "--format"),
    ],
)
def test_user_error_is_one_line_and_exit_code_2(args: list[str], fragment: str) -> None:
    _assert_one_line_error(run_cli(*args), fragment)


def test_given_more_gpus_than_torch_sees_then_one_line_naming_the_flag(tmp_path: Path) -> None:
    lake = tmp_path / "lake"  # with sequences: an empty lake is refused before the flag is checked
    write_sequences(Lake(lake), synthetic_sequences(sessions=60, days=3))

    _assert_one_line_error(run_cli("train", "--gpus", "99", "--lake", str(lake)), "--gpus 99 asked for 99 GPUs")


def _assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from clickstream.pipeline.orchestrate.cli import app; "
        "heavy = [m for m in ('torch', 'polars', 'mlflow', 'airflow', 'pyarrow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_ingest_keeps_freed_memory_before_polars_loads_and_a_users_setting_wins() -> None:
    code = (
        "import os, sys; os.environ['_RJEM_MALLOC_CONF'] = 'dirty_decay_ms:250'\n"
        "from clickstream.pipeline.orchestrate import cli\n"
        "sys.argv = ['clickstream', 'ingest', '--format', 'yoochoose', '/no/such/file.dat']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ['_RJEM_MALLOC_CONF'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # polars puts its own defaults first when it loads; later settings win
    polars_default, ours, users = (
        "dirty_decay_ms:500,muzzy_decay_ms:1000",
        "dirty_decay_ms:-1,muzzy_decay_ms:-1",
        "dirty_decay_ms:250",
    )
    assert result.stdout.strip() == f"{polars_default},{ours},{users}"
