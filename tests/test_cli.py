"""The CLI contract: every command has --help and every command on the lake takes --lake; user
errors are one line and exit 2; `scores` shows the latest day that has scores; --json carries the
summary's facts. The walk over every command is tests/test_cli_contract.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import Lake

COMMANDS = [
    "ingest",
    "sequences",
    "train",
    "tune",
    "score",
    "scores",
    "sql",
    "session",
    "report",
    "demo",
    "models",
    "promote",
    "rollback",
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_on_the_lake_has_help_and_a_lake_option(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--lake" in result.stdout


def test_generate_writes_files_only_so_it_takes_no_lake_option() -> None:
    result = run_cli("generate", "--help")

    assert result.returncode == 0, result.stderr
    assert "--lake" not in result.stdout


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
        (["generate", "out", "--lake", "lake"], "No such option: --lake"),
        (["generate", "out", "--start-date", "2014-04-31"], "--start-date '2014-04-31' is not a date"),
        (["rollback"], "Missing option '--reason'"),
        (["tune", "--timeout", "60"], "No such option: --timeout"),
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


def _json_line(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON object a --json command printed (stdout holds nothing else)."""
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1, result.stdout
    return json.loads(result.stdout)


def test_given_json_then_generate_prints_its_summary_facts_and_the_same_line(tmp_path: Path) -> None:
    line = run_cli("generate", str(tmp_path / "a"), "--sessions", "300", "--days", "2")
    facts = _json_line(run_cli("generate", str(tmp_path / "b"), "--sessions", "300", "--days", "2", "--json"))

    assert line.returncode == 0, line.stderr
    assert facts["summary"] == line.stdout.strip().replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert facts["sessions"] == 300 and facts["buys"] > 0
    assert sorted(facts["files"]) == sorted(str(p) for p in (tmp_path / "b").iterdir())


def test_given_a_last_day_with_only_sessions_from_the_day_before_then_scores_shows_the_last_scored_day(
    tmp_path: Path, champion_settings: Settings
) -> None:
    """The generator's last day holds only the events of sessions that cross midnight: no session
    starts there, so nothing is scored there, and `scores` must not pick it as the latest day."""
    data, lake, report = tmp_path / "data", champion_settings.lake, tmp_path / "report.html"
    env = {"MLFLOW_TRACKING_URI": champion_settings.tracking_uri}
    run_cli("generate", str(data), "--sessions", "400", "--days", "2", "--start-date", "2014-04-01").check_returncode()
    first, second, spill = dt.date(2014, 4, 1), dt.date(2014, 4, 2), "2014-04-03"

    clicks, buys = str(data / "yoochoose-clicks.dat"), str(data / "yoochoose-buys.dat")
    ingested = _json_line(run_cli("ingest", "--format", "yoochoose", clicks, "--buys", buys, "--lake", lake, "--json"))
    built = _json_line(run_cli("sequences", "--lake", lake, "--json"))
    scored = _json_line(run_cli("score", "--start", "2014-04-01", "--end", spill, "--lake", lake, "--json", env=env))
    top = run_cli("scores", "--top", "10", "--format", "csv", "--lake", lake)
    after = run_cli("scores", "--start", spill, "--lake", lake)
    reported = _json_line(run_cli("report", "--out", str(report), "--lake", lake, "--json", env=env))

    assert ingested["dates"][-1] == spill and ingested["rows_read"] == ingested["rows_written"]
    assert built["sessions"] == 400 and built["summary"].startswith("sequences 2014-04-01..")
    assert scored["dates"] == [str(first), str(second)] and scored["sessions"] == 400
    assert scored["model_version"] == "1" and scored["summary"].startswith("scored 400 sessions on ")
    assert top.returncode == 0, top.stderr
    assert pl.read_csv(top.stdout.encode())["date"].unique().to_list() == [str(second)]
    assert top.stderr.strip() == "10 rows x 9 columns"
    _assert_one_line_error(after, f"no scores/ rows from {spill} on; scores/ of lake {lake} holds {first}..{second}")
    assert reported["first"] == str(first) and reported["last"] == str(second) and reported["sessions"] == 400
    assert reported["out"] == str(report) and report.is_file()
