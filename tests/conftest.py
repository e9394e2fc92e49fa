"""Shared fixtures. Every test gets its own lake, state folder and MLflow store under
tmp_path, so tests never touch ./lake or ./.clickstream and can run in parallel."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Airflow reads its configuration once, at import: point it at a private home first.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="clickstream-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
for name in ("CLICKSTREAM_LAKE", "CLICKSTREAM_HOME", "CLICKSTREAM_LANDING", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)

from clickstream.pipeline.core.config import Settings, load_settings  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the lake, state folder and MLflow store inside tmp_path."""
    # environ={}: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would leak an
    # earlier test's store into this one
    return load_settings(lake=str(tmp_path / "lake"), home=tmp_path / "state", environ={})


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose MLflow store holds a tiny LSTM trained for one epoch on
    `fixtures.synthetic_sequences(sessions=1500, days=3)` and promoted to champion.
    Trained once per test process; tests use it through `champion_settings` (a private lake
    with this MLflow store) and must not register or promote models in it."""
    from dataclasses import replace

    from fixtures import synthetic_sequences, write_sequences

    from clickstream.models.training.train import train_and_register
    from clickstream.pipeline.core.config import ModelConfig
    from clickstream.pipeline.core.lake import Lake

    home = tmp_path_factory.mktemp("champion")
    base = load_settings(lake=str(home / "training-lake"), home=home, environ={})
    tiny = replace(
        base,
        model=ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=16),
        train=replace(base.train, batch_size=512, validation_days=1, min_positives=5),
    )
    write_sequences(Lake(tiny.lake), synthetic_sequences(sessions=1500, days=3))
    train_and_register(tiny, None, None, epochs=1, device="cpu", promote=True)
    return home


@pytest.fixture
def champion_settings(tmp_path: Path, champion_home: Path) -> Settings:
    """Settings with a private, empty lake and the MLflow store of `champion_home`."""
    return load_settings(lake=str(tmp_path / "lake"), home=champion_home, environ={})


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow exports MLFLOW_TRACKING_URI when a store is chosen; a test must never inherit
    an earlier test's store through it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


_MOTO = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # serve until the test process closes the pipe (or ends)
server.stop()
"""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback for the whole test process, in a child process of its own: delta-rs
    holds the interpreter while it waits on S3, which would stall a server running in a thread here."""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen([sys.executable, "-c", _MOTO], text=True, **pipes)
    assert server.stdin is not None and server.stdout is not None
    try:
        endpoint = server.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), f"moto did not start: {endpoint!r}"
        yield endpoint
    finally:
        server.stdin.close()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(60)
        server.stdout.close()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on `s3_endpoint` as an `s3://` URL; endpoint and credentials reach s3fs,
    polars and child processes only through the AWS_* environment, as in production."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
