"""Settings come from explicit values, then the environment, then one set of defaults."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from clickstream.pipeline.core.config import (
    SQL_MEMORY_MAX_MB,
    SQL_TIMEOUT_MAX_S,
    Settings,
    check_sql_limits,
    load_settings,
)
from clickstream.pipeline.core.errors import SettingError


def test_defaults_put_all_state_under_the_home_folder(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "state", environ={})
    assert settings.home == tmp_path / "state"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert settings.landing == str(tmp_path / "state" / "landing")
    assert settings.bad_row_threshold == 0.05


def test_environment_overrides_defaults_and_flags_override_environment(tmp_path: Path) -> None:
    env = {
        "CLICKSTREAM_LAKE": "s3://bucket/lake",
        "CLICKSTREAM_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "CLICKSTREAM_BAD_ROW_THRESHOLD": "0.2",
    }
    from_env = load_settings(environ=env)
    assert from_env.lake == "s3://bucket/lake"
    assert from_env.tracking_uri == "http://127.0.0.1:5000"
    assert from_env.bad_row_threshold == 0.2
    assert load_settings(lake=str(tmp_path / "other"), environ=env).lake == str(tmp_path / "other")


def test_relative_local_lake_becomes_absolute() -> None:
    assert Path(load_settings(lake="rel/lake", environ={}).lake).is_absolute()


def test_with_overrides_ignores_none() -> None:
    settings = Settings()
    assert settings.with_overrides(model_name=None) == settings
    assert settings.with_overrides(model_name="m").model_name == "m"



def test_a_home_or_lake_that_is_a_file_or_lies_under_one_is_a_setting_error(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        ({"CLICKSTREAM_HOME": str(afile)}, f"home {afile} (CLICKSTREAM_HOME) is not a folder"),
        ({"CLICKSTREAM_HOME": str(afile / "sub")}, f"cannot be a folder: {afile} is a file"),
        ({"CLICKSTREAM_LAKE": str(afile / "lake")}, f"lake root {afile / 'lake'} (CLICKSTREAM_LAKE) cannot be"),
    ]
    for environ, message in cases:
        with pytest.raises(SettingError, match=re.escape(message)):
            load_settings(environ={"CLICKSTREAM_HOME": str(tmp_path / "home"), **environ})
    assert load_settings(environ={"CLICKSTREAM_HOME": str(tmp_path / "new" / "home")}).home == tmp_path / "new" / "home"


@pytest.mark.parametrize(
    ("timeout_s", "memory_mb"),
    [(math.inf, 64), (math.nan, 64), (1e10, 64), (0, 64), (1, 63), (1, SQL_MEMORY_MAX_MB + 1), (1, 64.0)],
)
def test_sql_limits_out_of_their_ranges_are_setting_errors(timeout_s: float, memory_mb: int) -> None:
    check_sql_limits(SQL_TIMEOUT_MAX_S, SQL_MEMORY_MAX_MB)
    check_sql_limits(0.001, 64)
    with pytest.raises(SettingError, match="is out of range; expected"):
        check_sql_limits(timeout_s, memory_mb)


ENV_READ = re.compile(r"""(\benv\.get\(|environ\.get\(|getenv\(|environ\[)\s*["'](CLICKSTREAM_|AWS_ENDPOINT)""")


def test_the_train_executor_and_the_object_store_endpoint_are_read_here_and_nowhere_else() -> None:
    from clickstream.pipeline.core.config import object_store_options, train_executor

    assert train_executor({}) is None and train_executor({"CLICKSTREAM_TRAIN_EXECUTOR": ""}) is None
    assert train_executor({"CLICKSTREAM_TRAIN_EXECUTOR": "KubernetesExecutor"}) == "KubernetesExecutor"
    assert object_store_options({}) is None
    assert object_store_options({"AWS_ENDPOINT_URL": "https://s3.example"}) is None
    assert object_store_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {"aws_allow_http": "true"}
    # the S3-specific variable wins over the general one
    assert object_store_options({"AWS_ENDPOINT_URL_S3": "https://s3", "AWS_ENDPOINT_URL": "http://x"}) is None
    package = Path(__file__).resolve().parents[1]
    readers = [
        str(path.relative_to(package))
        for folder in ("pipeline", "features", "models", "dags")
        for path in (package / folder).rglob("*.py")
        if ENV_READ.search(path.read_text())
    ]
    assert readers == ["pipeline/core/config.py"]
