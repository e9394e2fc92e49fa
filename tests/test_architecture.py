"""The layout: the import-layer contract in `.importlinter` holds, and it really fails on a
back-edge or a cycle; every package folder is installed under the `clickstream.` namespace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"pipeline": "clickstream.pipeline", "features": "clickstream.features", "models": "clickstream.models"}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def scratch_copy(tmp_path: Path) -> Path:
    """The project's packages and contract copied under tmp_path as a `clickstream` namespace
    that comes first on the import path, so edits there are what lint-imports analyses."""
    package = tmp_path / "site" / "clickstream"
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    return package


def lint_imports(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def append_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # noqa\n")


def test_given_the_tree_as_it_is_when_the_contract_is_checked_then_every_contract_is_kept(tmp_path):
    scratch_copy(tmp_path)

    result = lint_imports(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_given_a_base_module_importing_the_cli_when_checked_then_the_layers_contract_is_broken(tmp_path):
    package = scratch_copy(tmp_path)
    append_import(package / "pipeline/core/errors.py", "from clickstream.pipeline.orchestrate import cli")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert re.search(r"Layers.*BROKEN", result.stdout), result.stdout
    assert "clickstream.pipeline.core.errors -> clickstream.pipeline.orchestrate.cli" in result.stdout


def test_given_models_importing_synthetic_data_when_checked_then_the_independent_siblings_are_broken(tmp_path):
    package = scratch_copy(tmp_path)
    append_import(package / "models/lstm.py", "from clickstream.pipeline.synthetic import tensors")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert "clickstream.models.lstm -> clickstream.pipeline.synthetic.tensors" in result.stdout


def test_given_two_feature_modules_importing_each_other_when_checked_then_the_acyclic_contract_is_broken(tmp_path):
    package = scratch_copy(tmp_path)
    append_import(package / "features/event_ids.py", "from clickstream.features import buy_rates")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert re.search(r"No import cycles.*BROKEN", result.stdout), result.stdout


def test_given_the_champion_decision_importing_mlflow_when_checked_then_the_pure_decision_contract_is_broken(
    tmp_path,
):
    package = scratch_copy(tmp_path)
    append_import(package / "models/registry/decision.py", "from mlflow import MlflowClient")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert re.search(r"decision is pure.*BROKEN", result.stdout), result.stdout
    assert "clickstream.models.registry.decision -> mlflow" in result.stdout


def test_given_the_registry_store_importing_the_champion_when_checked_then_the_registry_layers_are_broken(tmp_path):
    package = scratch_copy(tmp_path)
    append_import(package / "models/registry/store.py", "from clickstream.models.registry import champion")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert re.search(r"Registry:.*BROKEN", result.stdout), result.stdout


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_given_the_package_list_then_every_folder_with_an_init_is_installed_under_the_namespace(folder):
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join([FOLDERS[folder], *init.parent.relative_to(REPO / folder).parts])
        for init in (REPO / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }

    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
