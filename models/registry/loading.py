"""A model of the registry loaded as a ModelBundle (models.bundle): the LSTM with the vocabulary and
the calibration it was trained with, all read from the artifacts of the same MLflow model, the ones
its pyfunc (models.pyfunc) serves from, so they cannot drift apart. `clickstream score`,
`clickstream session` and the champion gate (registry.champion) load through here.

Models load only from the configured tracking store (`settings.tracking_uri`): a `models:/` URI,
`runs:/<run id>/model`, or a bare run id (store.resolve_model). Local paths and other artifact URLs
are refused.

Every load checks the weights file against the SHA-256 recorded at registration (the version's
`weights_sha256` tag, and the copy in the model's own network.json): a model whose weights were
damaged or altered in the artifact store is refused in one line naming its version, before a
single session is scored (models.bundle).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.models import Model

from clickstream.models.bundle import WEIGHTS_SHA256, ModelBundle, WeightsChecksumError
from clickstream.models.device import resolve_device
from clickstream.models.registry.store import download_model, resolve_model
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ModelNotFoundError


def load_model(settings: Settings, uri: str | None = None, *, device: str = "auto") -> ModelBundle:
    """The model behind `uri` (default `models:/<settings.model_name>@champion`) from
    settings.tracking_uri, ready to score on `device`, named with its model name and version
    (`run-<id>` for a run's model never registered). Raises ModelNotFoundError (one line) for a URI
    outside the registry, one that does not resolve there, or a model whose weights fail their
    registered SHA-256."""
    uri = uri or f"models:/{settings.model_name}@{CHAMPION}"
    model = resolve_model(settings, uri)
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        local = download_model(model, uri, Path(tmp))
        if not (local / "MLmodel").exists():
            raise ModelNotFoundError(f"{uri} is not an MLflow model (no MLmodel file)")
        try:
            bundle = ModelBundle.load(
                _artifacts(local), str(resolve_device(device)), weights_sha256=model.tags.get(WEIGHTS_SHA256)
            )
        except WeightsChecksumError as error:
            label = f"v{model.version}" if model.version.isdigit() else model.version
            raise ModelNotFoundError(f"model {model.name} {label} ({uri}) is not loaded: {error}") from None
        except KeyError as error:
            raise ModelNotFoundError(f"{uri} is not a clickstream model: it has no {error} artifact") from None
        except (MlflowException, OSError, ValueError, RuntimeError) as error:
            raise ModelNotFoundError(f"{uri} is not a clickstream model: {_first_line(error)}") from None
    return dataclasses.replace(bundle, model_name=model.name, model_version=model.version)


def _artifacts(model_dir: Path) -> dict[str, Path]:
    """The local paths of the artifacts a pyfunc model records in its MLmodel, by name."""
    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    return {name: model_dir / spec["path"] for name, spec in flavor.get("artifacts", {}).items()}


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
