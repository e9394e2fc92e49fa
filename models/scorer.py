"""A registered model ready to score sequences: the LSTM with the vocabulary and the
calibration it was trained with (a models.bundle.ModelBundle), all read from the artifacts
of the same MLflow model, the ones its pyfunc (models.pyfunc) serves from, so they cannot
drift apart and `clickstream score` gives what MLflow's clients give.

Models load only from the configured tracking store (`settings.tracking_uri`): a
`models:/` URI, `runs:/<run id>/model`, or a bare run id. Local paths and other
artifact URLs are refused.

Every load checks the weights file against the SHA-256 recorded at registration (the version's
`weights_sha256` tag, and the copy in the model's own network.json): a model whose weights were
damaged or altered in the artifact store is refused in one line naming its version, before a
single session is scored (models.bundle).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from clickstream.models.bundle import WEIGHTS_SHA256, ModelBundle, WeightsChecksumError
from clickstream.models.device import resolve_device
from clickstream.models.registry import tracking_client
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ModelNotFoundError
from clickstream.pipeline.core.tracking import redacted, require_store

if TYPE_CHECKING:
    import numpy as np
    import polars as pl
    from mlflow.entities.model_registry import ModelVersion

    from clickstream.features.vocabulary import Vocabulary
    from clickstream.models.calibration import Calibration
    from clickstream.models.lstm import BuyIntentLSTM

MODEL_ARTIFACT = "model"  # the model's folder inside its run
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>(?!.*\.\.)[\w./-]+)$")  # no `..`: stays in the run


@dataclass
class Scorer:
    """One model version; scoring is deterministic (eval mode, no dropout) and calibrated."""

    model_name: str
    model_version: str
    bundle: ModelBundle

    @property
    def model(self) -> BuyIntentLSTM:
        return self.bundle.model

    @property
    def vocabulary(self) -> Vocabulary:
        return self.bundle.vocabulary

    @property
    def calibration(self) -> Calibration:
        return self.bundle.calibration

    @property
    def device(self) -> str:
        return self.bundle.device

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        """Calibrated buy probability per session: float32 in [0, 1], in the frame's row order."""
        return self.bundle.score(sequences)

    def running_scores(self, sequences: pl.DataFrame) -> np.ndarray:
        """Calibrated buy probability after each event: float32 in [0, 1], flat (row order, then event order)."""
        return self.bundle.running_scores(sequences)


def load_scorer(settings: Settings, model_uri: str | None = None, *, device: str = "auto") -> Scorer:
    """The model behind `model_uri` (default `models:/<settings.model_name>@champion`) from
    settings.tracking_uri, ready to score on `device`. Raises ModelNotFoundError (one line)
    for a URI outside the registry, one that does not resolve there, or a model whose weights
    fail their registered SHA-256."""
    uri = model_uri or f"models:/{settings.model_name}@{CHAMPION}"
    name, version, artifact_uri, checksum = _resolve(settings, uri)
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp))
        except (MlflowException, OSError) as error:
            raise ModelNotFoundError(f"cannot download model {uri}: {_first_line(error)}") from None
        if not (local / "MLmodel").exists():
            raise ModelNotFoundError(f"{uri} is not an MLflow model (no MLmodel file)")
        try:
            bundle = ModelBundle.load(_artifacts(local), str(resolve_device(device)), weights_sha256=checksum)
        except WeightsChecksumError as error:
            label = f"v{version}" if version.isdigit() else version  # a run's model without a version: run-<id>
            raise ModelNotFoundError(f"model {name} {label} ({uri}) is not loaded: {error}") from None
        except KeyError as error:
            raise ModelNotFoundError(f"{uri} is not a clickstream model: it has no {error} artifact") from None
        except (MlflowException, OSError, ValueError, RuntimeError) as error:
            raise ModelNotFoundError(f"{uri} is not a clickstream model: {_first_line(error)}") from None
    return Scorer(name, version, bundle)


def _artifacts(model_dir: Path) -> dict[str, Path]:
    """The local paths of the artifacts a pyfunc model records in its MLmodel, by name."""
    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    return {name: model_dir / spec["path"] for name, spec in flavor.get("artifacts", {}).items()}


def _resolve(settings: Settings, uri: str) -> tuple[str, str, str, str | None]:
    """(model name, version label, artifact URI, the weights' SHA-256 the registry recorded or None) for
    a registry or run URI; refuses anything else."""
    store = redacted(settings.tracking_uri)
    if _RUN_ID.match(uri):
        uri = f"runs:/{uri}/{MODEL_ARTIFACT}"
    models, runs = _MODELS_URI.match(uri), _RUNS_URI.match(uri)
    if not (models or runs):  # refused before the store is even opened
        raise ModelNotFoundError(
            f"{uri!r} is not a registry model URI; use models:/NAME@ALIAS, models:/NAME/VERSION, "
            f"runs:/RUN_ID/model or a run id from {store}"
        )
    require_store(settings.tracking_uri, uri)  # opening a missing store would create it
    client = tracking_client(settings)
    try:
        if models:
            name = models["name"]
            found = (
                client.get_model_version(name, models["version"])
                if models["version"]
                else client.get_model_version_by_alias(name, models["alias"])
            )
            return name, str(found.version), f"models:/{name}/{found.version}", _checksum(found)
        client.get_run(runs["run"])
        versions = client.search_model_versions(f"run_id='{runs['run']}'")
        registered = [v for v in versions if v.name == settings.model_name]
        label = str(registered[0].version) if registered else f"run-{runs['run']}"
        return settings.model_name, label, uri, _checksum(registered[0]) if registered else None
    except MlflowException as error:
        raise ModelNotFoundError(f"model {uri} not found in {store}: {_first_line(error)}") from None


def _checksum(version: ModelVersion) -> str | None:
    """The weights' SHA-256 recorded as the version's tag at registration (None before checksums existed)."""
    return (version.tags or {}).get(WEIGHTS_SHA256)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
