"""The MLflow side of clickstream: the tracking store, the registered model
`clickstream-buy-intent` and its `challenger` and `champion` aliases (the gate is models.promotion).

Everything goes to `settings.tracking_uri` (tracking and registry alike); with a local
store (SQLite or a folder) artifacts live under `settings.home/mlartifacts`, never in
the working directory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from clickstream.pipeline.core.config import CHALLENGER, Settings
from clickstream.pipeline.core.errors import TrackingStoreError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

EXPERIMENT = "clickstream"
# version tags written at registration and read by the gate
FINGERPRINT_TAG = "fingerprint"
VAL_START_TAG, VAL_END_TAG = "val_start", "val_end"


def tracking_client(settings: Settings) -> MlflowClient:
    """A client on settings.tracking_uri, also made this process's tracking and registry URI
    for mlflow's fluent API, with the `clickstream` experiment created (artifacts under
    settings.home for local stores). A store that cannot be reached raises TrackingStoreError."""
    # mlflow also exports the URIs to the environment, where load_settings would read them
    # for every later Settings of this process (another lake, another test): put it back.
    exported = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    try:  # the first contact: a store that is not there fails here, once mlflow's HTTP retries are spent
        experiment = client.get_experiment_by_name(EXPERIMENT)
    except MlflowException as error:
        message = str(error).strip().splitlines()[0].replace(settings.tracking_uri, redacted(settings.tracking_uri))
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking store {redacted(settings.tracking_uri)} (MLFLOW_TRACKING_URI): {message}"
        ) from None
    if experiment is None:
        local = settings.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.tracking_uri
        location = (settings.home / "mlartifacts").absolute().as_uri() if local else None
        client.create_experiment(EXPERIMENT, artifact_location=location)
    return client


def experiment_id(client: MlflowClient) -> str:
    """The id of the `clickstream` experiment (tracking_client creates it)."""
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


def redacted(uri: str) -> str:
    """The URI without any user:password part, safe to print."""
    scheme, sep, rest = uri.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}" if sep else uri


def version_with_fingerprint(settings: Settings, fingerprint: str) -> ModelVersion | None:
    """The newest registered version trained on exactly this window, data and configuration, if any."""
    found = tracking_client(settings).search_model_versions(
        f"name='{settings.model_name}' and tags.{FINGERPRINT_TAG}='{fingerprint}'"
    )
    ready = [v for v in found if v.status == "READY"]
    return max(ready, key=lambda v: int(v.version)) if ready else None


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version number behind `alias` of settings.model_name, or None when unset."""
    try:
        return str(tracking_client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def set_challenger(settings: Settings, version: str) -> None:
    """Point the `challenger` alias at `version` (idempotent)."""
    tracking_client(settings).set_registered_model_alias(settings.model_name, CHALLENGER, version)
