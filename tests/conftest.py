"""Shared fixtures. Every test gets its own lake, state folder and MLflow store under
tmp_path, so tests never touch ./lake or ./.clickstream and can run in parallel."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Airflow reads its configuration once, at import: point it at a private home first.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="clickstream-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
for name in ("CLICKSTREAM_LAKE", "CLICKSTREAM_HOME", "CLICKSTREAM_LANDING", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)

from pipeline.config import Settings, load_settings  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the lake, state folder and MLflow store inside tmp_path."""
    return load_settings(lake=str(tmp_path / "lake"), home=tmp_path / "state")
