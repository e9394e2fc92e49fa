"""Every third-party package the code imports is declared, and declared at the version that is tested:
deptry passes on the tree with no blanket ignore and really fails on an undeclared import, and
every pin of pyproject.toml is the one in constraints.txt and the one installed."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPTRY = Path(sys.executable).with_name("deptry")
SCANNED = ("pipeline", "features", "models", "dags", "benchmarks")  # what `deptry .` reads (tests/ is excluded)


def deptry(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPTRY), ".", "--no-ansi"], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """name (canonical, extras dropped) -> pinned version, from `name[extra]==version` lines."""
    pairs = (re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", line.split("#")[0].strip()) for line in lines)
    return {_canonical(match.group(1)): match.group(2) for match in pairs if match}


def test_given_the_tree_then_deptry_finds_every_import_declared_and_every_declaration_used() -> None:
    result = deptry(REPO)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr


def test_given_a_module_importing_a_package_only_installed_through_another_then_deptry_fails_naming_it(
    tmp_path: Path,
) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in SCANNED:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "data"))
    lstm = tmp_path / "models" / "lstm.py"
    lstm.write_text(lstm.read_text() + "\nimport cloudpickle  # noqa\n")  # installed for MLflow, not declared

    result = deptry(tmp_path)

    issues = [line for line in (result.stdout + result.stderr).splitlines() if re.search(r"DEP\d{3}", line)]
    assert result.returncode != 0
    assert len(issues) == 1 and "models/lstm.py" in issues[0] and "DEP003 'cloudpickle'" in issues[0], issues


def test_given_the_deptry_settings_then_no_rule_is_switched_off_and_no_transitive_import_is_excused() -> None:
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["deptry"]

    assert "ignore" not in settings and "exclude" not in settings and "extend_exclude" not in settings
    assert set(settings.get("per_rule_ignores", {})) <= {"DEP001", "DEP002"}


def test_given_the_pins_of_pyproject_then_each_is_the_tested_constraint_and_the_installed_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _pins(
        [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    )
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())

    assert {"scipy", "pandas", "sqlalchemy", "deptry"} <= set(declared)
    assert {name: constraints.get(name) for name in declared} == declared
    assert {name: importlib.metadata.version(name) for name in declared} == declared
