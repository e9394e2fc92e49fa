"""The command line as a whole, walked from the app's command tree so that a new command or flag is
checked too: `-h` answers as `--help` does, every option explains itself, days show as DATE, every
command that prints a summary takes --json, a flag name means one thing across commands (the table
below lists the names allowed a meaning per command), `--version` prints the package version, and a
reversed date range is one line and exit 2 on every command that takes one."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import pytest
import typer.main
from fixtures import synthetic_sequences, write_sequences
from typer._click import Command, Context
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from clickstream.models.registry.decision import Action, Decision
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.orchestrate.cli import app
from clickstream.pipeline.serve.output import summary_json

ROOT = typer.main.get_command(app)


def _tree(command: Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Command]]:
    """Every command and group below `command` (itself included), with its words after `clickstream`."""
    below = command.commands.items() if isinstance(command, TyperGroup) else []
    return [(path, command), *(entry for name, sub in below for entry in _tree(sub, (*path, name)))]


TREE = dict(_tree(ROOT))
COMMANDS = {path: command for path, command in TREE.items() if not isinstance(command, TyperGroup)}
# what these print is data (a table, CSV, JSON records, a trace) chosen with --format, not a summary
DATA_COMMANDS = {("scores",), ("sql",), ("session",), ("models",), ("lake", "history")}
DATE_FLAGS = {"--start", "--end", "--start-date"}
# flag names that mean different things on different commands: command -> which meaning
MEANINGS: dict[str, dict[tuple[str, ...], str]] = {
    "--format": {
        ("ingest",): "input file format",
        ("generate",): "output file format",
        **{path: "output format" for path in [("scores",), ("sql",), ("models",), ("lake", "history")]},
    },
    "--version": {(): "print the package version", ("lake", "restore"): "the table version to restore"},
    "--out": {("scores",): "data file", ("sql",): "data file", ("report",): "HTML file"},
    "--days": {("generate",): "days of generated sessions", ("demo",): "days of landing data run"},
}


def _name(path: tuple[str, ...]) -> str:
    return " ".join(("clickstream", *path))


def _options(command: Command) -> list[TyperOption]:
    """The command's options, --help included."""
    return [param for param in command.get_params(Context(command)) if isinstance(param, TyperOption)]


def _help(path: tuple[str, ...], flag: str) -> str:
    result = CliRunner().invoke(app, [*path, flag], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=dict(os.environ)
    )


def test_the_tree_holds_every_command_and_the_lake_group() -> None:
    assert {("generate",), ("train",), ("lake", "restore"), ("lake", "migrate")} <= set(COMMANDS)
    assert set(TREE) - set(COMMANDS) == {(), ("lake",)}


@pytest.mark.parametrize("path", list(TREE), ids=_name)
def test_every_command_and_group_answers_dash_h_as_it_answers_help(path: tuple[str, ...]) -> None:
    short = _help(path, "-h")

    assert short == _help(path, "--help")
    assert short.startswith(f"Usage: {_name(path)} ") and "-h, --help" in short


@pytest.mark.parametrize("path", list(TREE), ids=_name)
def test_every_option_and_argument_has_help_text(path: tuple[str, ...]) -> None:
    params = TREE[path].get_params(Context(TREE[path]))

    assert all(param.help and param.help.strip() for param in params), [p.name for p in params if not p.help]


@pytest.mark.parametrize("path", list(COMMANDS), ids=_name)
def test_every_day_option_is_a_date_shown_as_DATE(path: tuple[str, ...]) -> None:
    days = [option for option in _options(COMMANDS[path]) if set(option.opts) & DATE_FLAGS or "YYYY" in option.help]
    text = " ".join(_help(path, "--help").split())

    for option in days:
        assert option.type_descriptor.annotation is dt.date, option.opts
        assert option.metavar == "DATE" and f"{option.opts[0]} DATE " in text


def test_the_day_options_are_found_where_they_are() -> None:
    found = {
        (path, flag)
        for path, command in COMMANDS.items()
        for o in _options(command)
        for flag in o.opts
        if o.metavar == "DATE"
    }

    assert {(("scores",), "--start"), (("train",), "--end"), (("generate",), "--start-date")} <= found


@pytest.mark.parametrize("path", sorted(set(COMMANDS) - DATA_COMMANDS), ids=_name)
def test_every_command_that_prints_a_summary_takes_json(path: tuple[str, ...]) -> None:
    json_flag = next(option for option in _options(COMMANDS[path]) if "--json" in option.opts)

    assert json_flag.is_flag and "JSON object" in json_flag.help


def test_the_data_commands_are_commands() -> None:
    assert set(COMMANDS) >= DATA_COMMANDS


def test_each_flag_name_has_one_meaning_or_a_listed_one_per_command() -> None:
    helps: dict[str, dict[tuple[str, ...], str]] = defaultdict(dict)
    for path, command in TREE.items():
        for option in _options(command):
            for flag in option.opts:
                helps[flag][path] = " ".join(option.help.split())

    several = {flag for flag, by_command in helps.items() if len(set(by_command.values())) > 1}
    assert set(MEANINGS) <= several, "a listed flag now has one meaning: drop it from MEANINGS"
    for flag in several:
        by_command = helps[flag]
        assert flag in MEANINGS, f"{flag} means different things: {by_command}"
        assert set(by_command) == set(MEANINGS[flag]), flag
        same_meaning: dict[str, set[str]] = defaultdict(set)
        for path, text in by_command.items():
            same_meaning[MEANINGS[flag][path]].add(text)
        assert all(len(texts) == 1 for texts in same_meaning.values()), (flag, dict(same_meaning))


def test_tune_has_a_time_budget_and_sql_a_hard_time_limit() -> None:
    tune, sql = ({f for o in _options(COMMANDS[(name,)]) for f in o.opts} for name in ("tune", "sql"))

    assert "--time-budget" in tune and "--timeout" not in tune
    assert "--timeout" in sql and "stopped" in _help(("sql",), "--help")


def test_no_shell_completion_is_offered() -> None:
    text = _help((), "--help")

    assert "completion" not in text.lower()


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    done = _run("--version", cwd=tmp_path)

    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"clickstream {version('clickstream')}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--install-completion"],
        ["nope"],
        ["lake", "restore", "nope", "--version", "1"],
        ["scores", "--top", "x"],
        ["train", "--device", "gpu"],
    ],
)
def test_a_usage_error_is_one_lowercase_error_line(tmp_path: Path, args: list[str]) -> None:
    done = _run(*args, cwd=tmp_path)

    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert "Error:" not in done.stderr and "Traceback" not in done.stderr and "Value error" not in done.stderr


RANGED = sorted(
    path for path, command in COMMANDS.items() if {"--start", "--end"} <= {f for o in _options(command) for f in o.opts}
)


def test_the_ranged_commands_are_found() -> None:
    assert {("sequences",), ("train",), ("tune",), ("score",), ("scores",), ("report",)} == set(RANGED)


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose sequences hold three days (and no events or scores)."""
    root = tmp_path_factory.mktemp("ranged") / "lake"
    write_sequences(Lake(root), synthetic_sequences(sessions=60, days=3))
    return root


@pytest.mark.parametrize("path", RANGED, ids=_name)
def test_a_reversed_range_is_one_line_naming_the_days_held_and_exit_2(
    path: tuple[str, ...], three_days: Path, tmp_path: Path
) -> None:
    days = Lake(three_days).dates("sequences")
    later = days[-1].isoformat()

    done = _run(*path, "--start", later, "--end", days[0].isoformat(), "--lake", str(three_days), cwd=tmp_path)

    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: --start {later} is after --end {days[0]}; ")
    held = f"{days[0]}..{days[-1]} (3 days)" if path in {("train",), ("tune",), ("score",)} else "no days"
    assert line.endswith(f"of lake {three_days} holds {held}")


def test_a_summary_as_json_keeps_every_fact_in_json_types() -> None:
    decision = Decision(
        decided_at=dt.datetime(2014, 4, 9, 6, 0, tzinfo=dt.UTC),
        decided_by="cli:rollback (ana@laptop)",
        action=Action.ROLLBACK,
        challenger_version="2",
        challenger_auc=math.nan,
        champion_version="3",
        champion_auc=0.71,
        margin=math.nan,
        reason="scores collapsed",
        window_start=None,
        window_end=dt.date(2014, 4, 8),
        sessions=0,
    )

    facts = json.loads(summary_json(decision))

    assert facts["action"] == "rollback" and facts["decided_at"] == "2014-04-09T06:00:00+00:00"
    assert facts["challenger_auc"] is None and facts["margin"] is None and facts["champion_auc"] == 0.71
    assert facts["window_start"] is None and facts["window_end"] == "2014-04-08"
    assert facts["moves_champion"] is True and facts["champion_after"] == "2"  # properties too
    assert facts["summary"] == str(decision) == "v2 restored as champion: scores collapsed"
