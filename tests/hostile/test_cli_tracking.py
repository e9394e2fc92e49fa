"""Tracking URIs: their secrets (user-info, query values, fragment) never reach a message, a
store whose driver is missing is one line, and a local store that does not exist is neither
opened nor created when a model is asked of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cli_process import run_cli

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ModelNotFoundError, TrackingStoreError
from clickstream.pipeline.core.tracking import redacted, scrubbed, store_is_missing

HIDDEN_PW, HIDDEN_VALUE = "pw-7f3a9", "tok-91c2e"  # stand-ins for a password and a query secret


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://user:secret@db:5432/mlflow", "postgresql://db:5432/mlflow"),
        (f"postgresql+pg8000://analyst:{HIDDEN_PW}@db/mlflow?token={HIDDEN_VALUE}", "postgresql+pg8000://db/mlflow?token=***"),
        (f"https://db.example/mlflow?user=a&token={HIDDEN_VALUE}&flag", "https://db.example/mlflow?user=***&token=***&***"),
        (f"https://{HIDDEN_VALUE}@host/path#{HIDDEN_PW}", "https://host/path#***"),
        (f"https://user:secret@ss@host/x?{HIDDEN_VALUE}", "https://host/x?***"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("/var/mlruns", "/var/mlruns"),
        ("databricks", "databricks"),
    ],
)
def test_given_a_tracking_uri_then_its_printable_form_holds_no_secret(uri: str, shown: str) -> None:
    assert redacted(uri) == shown


def test_given_a_driver_message_with_the_secrets_then_scrubbing_masks_them_raw_and_decoded() -> None:
    uri = f"postgresql://analyst:{HIDDEN_PW}%21@db/mlflow?token={HIDDEN_VALUE}"
    message = f"connect to {uri} failed: password '{HIDDEN_PW}!' rejected; option token={HIDDEN_VALUE} unknown"

    clean = scrubbed(message, uri)

    assert HIDDEN_PW not in clean and HIDDEN_VALUE not in clean and "analyst:" not in clean
    assert "postgresql://db/mlflow?token=***" in clean


@pytest.mark.parametrize(
    "uri",
    [
        f"postgresql+pg8000://analyst:{HIDDEN_PW}@127.0.0.1:1/mlflow?token={HIDDEN_VALUE}",
        f"mysql://analyst:{HIDDEN_PW}@127.0.0.1:1/mlflow?token={HIDDEN_VALUE}",
    ],
)
def test_given_a_database_uri_without_its_driver_then_one_line_naming_the_driver_without_secrets(
    settings: Settings, uri: str
) -> None:
    from clickstream.models.registry.store import tracking_client

    with pytest.raises(TrackingStoreError, match=r"database driver \S+ is not installed") as error:
        tracking_client(dataclasses.replace(settings, tracking_uri=uri))

    message = str(error.value)
    assert "\n" not in message and HIDDEN_PW not in message and HIDDEN_VALUE not in message
    assert "127.0.0.1:1/mlflow?token=***" in message


def test_given_a_database_uri_without_its_driver_on_the_command_line_then_exit_2_without_secrets(
    tmp_path: Path,
) -> None:
    from fixtures import synthetic_sequences, write_sequences

    from clickstream.pipeline.core.lake import Lake

    write_sequences(Lake(tmp_path / "lake"), synthetic_sequences(sessions=30, days=1))
    uri = f"postgresql+pg8000://analyst:{HIDDEN_PW}@127.0.0.1:1/mlflow?token={HIDDEN_VALUE}"

    done = run_cli("score", "--lake", str(tmp_path / "lake"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})

    assert done.code == 2 and "pg8000 is not installed" in done.error_line
    assert HIDDEN_PW not in done.stderr + done.stdout and HIDDEN_VALUE not in done.stderr + done.stdout


def test_given_local_store_uris_then_only_a_missing_local_one_counts_as_missing(tmp_path: Path) -> None:
    existing = tmp_path / "mlflow.db"
    existing.write_bytes(b"")

    assert store_is_missing(f"sqlite:///{tmp_path / 'absent.db'}")
    assert store_is_missing(f"file://{tmp_path / 'mlruns'}") and store_is_missing(str(tmp_path / "mlruns"))
    assert not store_is_missing(f"sqlite:///{existing}")
    assert not store_is_missing("sqlite://") and not store_is_missing("http://127.0.0.1:5000")
    assert not store_is_missing("databricks")


def test_given_no_store_yet_when_a_model_is_loaded_then_model_not_found_and_no_store_created(
    settings: Settings,
) -> None:
    from clickstream.models.registry.loading import load_model

    store = Path(settings.tracking_uri.removeprefix("sqlite:///"))
    for model in (None, "models:/clickstream-buy-intent/1", "0" * 32):
        with pytest.raises(ModelNotFoundError, match="does not exist yet") as error:
            load_model(settings, model)
        assert redacted(settings.tracking_uri) in str(error.value)
    assert not store.exists() and not store.parent.exists()
