"""The MLflow adapter: tracking URIs are shown without credentials and an unreachable store is one line."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from clickstream.models.registry.store import tracking_client
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import TrackingStoreError


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
