"""Settings come from explicit values, then the environment, then one set of defaults."""

from __future__ import annotations

from pathlib import Path

from clickstream.pipeline.core.config import Settings, load_settings


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
