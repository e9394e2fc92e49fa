"""The MLflow adapter: tracking URIs are shown without credentials, an unreachable store is one line,
and a session the lake does not hold is answered before MLflow or torch is imported."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.models.registry.store import tracking_client
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import TrackingStoreError
from clickstream.pipeline.core.lake import Lake

HEAVY = ("torch", "mlflow", "sklearn", "airflow")
# `clickstream ARGS...`, then the heavy modules the process imported, one line on stderr
CLI_THEN_IMPORTS = (
    "import sys\n"
    "from clickstream.pipeline.orchestrate.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    f"print('imported:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
)


def test_given_a_tracking_server_that_is_not_there_then_one_line_naming_it_without_credentials(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    nowhere = dataclasses.replace(settings, tracking_uri=f"http://user:secret@127.0.0.1:{port}")

    reachable = f"cannot reach the MLflow tracking store http://127.0.0.1:{port}"
    with pytest.raises(TrackingStoreError, match=reachable) as error:
        tracking_client(nowhere)
    assert "\n" not in str(error.value) and "secret" not in str(error.value)


@pytest.mark.parametrize("store", ["created", "missing"])
def test_given_a_session_the_lake_does_not_hold_then_one_line_before_mlflow_or_torch_is_imported(
    settings: Settings, store: str
) -> None:
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=30, days=1))
    if store == "created":  # a model could be loaded: only the lake check keeps the heavy imports out
        tracking_client(settings)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "CLICKSTREAM"))}
    environ |= {"CLICKSTREAM_HOME": str(settings.home), "CLICKSTREAM_LAKE": settings.lake}

    done = subprocess.run(
        [sys.executable, "-c", CLI_THEN_IMPORTS, "session", "no-such-session"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )

    error, imported = done.stderr.strip().splitlines()
    assert error == f"error: session 'no-such-session' is not in sequences/ of lake {settings.lake}"
    assert imported == "imported: []"
