"""The MLflow side of clickstream: the tracking store, the registered model
`clickstream-buy-intent`, its `challenger` and `champion` aliases, and the champion gate.

Everything goes to `settings.tracking_uri` (tracking and registry alike); with a local
store (SQLite or a folder) artifacts live under `settings.home/mlartifacts`, never in
the working directory. mlflow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import CHALLENGER, CHAMPION, Settings
from pipeline.errors import ClickstreamError, ModelNotFoundError, NoDataError, TrackingStoreError

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
    import mlflow
    from mlflow.exceptions import MlflowException

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
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking_client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def set_challenger(settings: Settings, version: str) -> None:
    """Point the `challenger` alias at `version` (idempotent)."""
    tracking_client(settings).set_registered_model_alias(settings.model_name, CHALLENGER, version)


@dataclass(frozen=True)
class PromotionDecision:
    """What the champion gate decided for one challenger, with both validation AUCs."""

    version: str
    promoted: bool
    reason: str
    challenger_auc: float
    champion_version: str | None  # the champion before the decision
    champion_auc: float  # NaN when there was no loadable champion
    window: tuple[dt.date, dt.date]

    def __str__(self) -> str:
        verdict = "promoted to champion" if self.promoted else "not promoted"
        return f"v{self.version} {verdict}: {self.reason}"


def promote_if_better(
    settings: Settings, version: str, start: dt.date | None = None, end: dt.date | None = None
) -> PromotionDecision:
    """Move the `champion` alias to `version` only if its AUC beats the current champion's,
    both scored now on the same labelled sessions starting in [start, end] (default: the
    version's own validation days), each through its own vocabulary.

    Promotes without comparison when there is no champion or it cannot be loaded (the reason
    says so); never when the AUCs tie. The decision, reason and both AUCs become tags on the
    version. Re-running for a version that already is champion changes nothing.
    """
    from mlflow.exceptions import MlflowException

    from features.sequences import read_sequences
    from models.evaluation import auc
    from models.scorer import load_scorer
    from pipeline.lake import Lake

    client = tracking_client(settings)
    name = settings.model_name
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException:
        raise ModelNotFoundError(f"no version {version} of {name} in {redacted(settings.tracking_uri)}") from None
    start = start or _tag_date(tags, VAL_START_TAG, version)
    end = end or _tag_date(tags, VAL_END_TAG, version)
    frame = read_sequences(Lake(settings.lake), start, end)
    frame = frame.filter(frame["label"].is_not_null())
    if frame.is_empty():
        raise NoDataError(f"no labelled sessions in sequences/ between {start} and {end} to compare models on")
    labels = frame["label"].to_numpy()

    challenger_auc = auc(labels, load_scorer(settings, f"models:/{name}/{version}").score(frame))
    champion_version = alias_version(settings, CHAMPION)
    champion_auc = math.nan
    if champion_version is None:
        promoted, reason = True, "there was no champion"
    elif champion_version == str(version):
        promoted, reason = False, "it already is the champion"
    else:
        try:
            champion_auc = auc(labels, load_scorer(settings, f"models:/{name}/{champion_version}").score(frame))
        except ClickstreamError as error:
            promoted, reason = True, f"champion v{champion_version} could not be loaded ({error})"
        else:
            promoted = challenger_auc > champion_auc  # NaN (one class) compares False: keep the champion
            relation = "beats" if promoted else "does not beat"
            reason = (
                f"AUC {challenger_auc:.4f} {relation} champion v{champion_version}'s {champion_auc:.4f} "
                f"on {start}..{end}"
            )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    decision = PromotionDecision(
        str(version), promoted, reason, challenger_auc, champion_version, champion_auc, (start, end)
    )
    for key, value in {
        "promotion_decision": "promoted" if promoted else "rejected",
        "promotion_reason": reason,
        "promotion_window": f"{start}..{end}",
        "challenger_val_auc": f"{challenger_auc:.6f}",
        "champion_val_auc": f"{champion_auc:.6f}",
        "champion_version_before": champion_version or "none",
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    return decision


def _tag_date(tags: dict[str, str], key: str, version: str) -> dt.date:
    if key not in tags:
        raise ModelNotFoundError(f"model version {version} has no {key} tag; pass the comparison window explicitly")
    return dt.date.fromisoformat(tags[key])
