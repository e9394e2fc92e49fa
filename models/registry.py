"""The MLflow side of clickstream: the tracking store, the registered model
`clickstream-buy-intent` with its `challenger` and `champion` aliases, and the decision history
(experiment `clickstream-decisions`). It only reads and writes MLflow: what to decide is
models.promotion, how a decision is gathered is models.champion.

Everything goes to `settings.tracking_uri` (tracking and registry alike); with a local
store (SQLite or a folder) artifacts live under `settings.home/mlartifacts`, never in
the working directory.

Decision records are append-only: each is its own run of `clickstream-decisions` whose
fields are run params, which MLflow never lets anyone change. A record is written RUNNING, the
alias moves, then the run is marked FINISHED; only FINISHED runs are history.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from clickstream.pipeline.core.config import CHALLENGER, CHAMPION, Settings
from clickstream.pipeline.core.errors import ModelNotFoundError, TrackingStoreError
from clickstream.pipeline.core.tracking import redacted, scrubbed

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

EXPERIMENT = "clickstream"
DECISIONS_EXPERIMENT = "clickstream-decisions"  # one run per champion decision, never rewritten
# version tags written once, at registration: read by training (fingerprint), the gate
# (validation days, feature schema) and the analysts' figures (the window the model saw)
FINGERPRINT_TAG = "fingerprint"
VAL_START_TAG, VAL_END_TAG = "val_start", "val_end"  # the validation days; val_end is the last day seen
WINDOW_TAG = "window"  # FIRST..LAST: the training window asked for
FEATURE_SCHEMA_TAG = "feature_schema"  # features.tensors.feature_schema() of the code that trained it
# the lake's table versions the model learned from (`clickstream train --as-of` retrains on the same)
SEQUENCES_VERSION_TAG, EVENTS_VERSION_TAG = "sequences_version", "events_version"


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
    try:  # the first contact: a store that is not there fails here, once mlflow's HTTP retries are spent
        client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
    except ImportError as error:  # a database URI whose driver is not installed
        raise TrackingStoreError(
            f"cannot open the MLflow tracking store {redacted(settings.tracking_uri)} (MLFLOW_TRACKING_URI): "
            f"its database driver {error.name or error} is not installed"
        ) from None
    except (MlflowException, SQLAlchemyError, OSError) as error:
        lines = str(error).strip().splitlines()
        message = scrubbed(lines[0] if lines else type(error).__name__, settings.tracking_uri)
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking store {redacted(settings.tracking_uri)} (MLFLOW_TRACKING_URI): {message}"
        ) from None
    if experiment is None:
        _create_experiment(settings, client, EXPERIMENT)
    return client


def _create_experiment(settings: Settings, client: MlflowClient, name: str) -> str:
    local = settings.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.tracking_uri
    location = (settings.home / "mlartifacts").absolute().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


def experiment_id(client: MlflowClient) -> str:
    """The id of the `clickstream` experiment (tracking_client creates it)."""
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


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


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    """The tags of one registered version; ModelNotFoundError (one line) when there is no such version."""
    try:
        return dict(tracking_client(settings).get_model_version(settings.model_name, version).tags)
    except MlflowException:
        store = redacted(settings.tracking_uri)
        raise ModelNotFoundError(f"no version {version} of {settings.model_name} in {store}") from None


def registered_versions(settings: Settings) -> list[ModelVersion]:
    """Every registered version of settings.model_name, oldest first (empty when none)."""
    found = tracking_client(settings).search_model_versions(f"name='{settings.model_name}'")
    return sorted(found, key=lambda v: int(v.version))


def record_decision(settings: Settings, fields: dict[str, str], champion: str | None) -> str:
    """Append one decision (its fields as immutable run params) to the history and, when
    `champion` is given, move the `champion` alias to it; returns the record's id (its run id).
    The record counts (is FINISHED) only once the alias has moved: a failure marks it FAILED."""
    client = tracking_client(settings)
    found = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    experiment = found.experiment_id if found else _create_experiment(settings, client, DECISIONS_EXPERIMENT)
    run_id = client.create_run(experiment, run_name=fields.get("action")).info.run_id
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in fields.items()], synchronous=True)
        if champion is not None:
            client.set_registered_model_alias(settings.model_name, CHAMPION, champion)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def decision_records(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """Every finished decision record as (id, fields), oldest first."""
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    if experiment is None:
        return []
    records, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        records += [(run.info.run_id, dict(run.data.params)) for run in page]
        token = page.token
        if not token:
            return records
