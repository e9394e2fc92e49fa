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

Importing this module costs nothing: MLflow and torch load with the first model, so that a command
that may load one (`clickstream session`) answers from the lake alone when the lake says no.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ModelNotFoundError

if TYPE_CHECKING:
    from clickstream.models.bundle import ModelBundle
    from clickstream.models.registry.store import ResolvedModel


def load_model(settings: Settings, uri: str | None = None, *, device: str = "auto") -> ModelBundle:
    """The model behind `uri` (default `models:/<settings.model_name>@champion`) from
    settings.tracking_uri, ready to score on `device`, named with its model name and version
    (`run-<id>` for a run's model never registered). Raises ModelNotFoundError (one line) for a URI
    outside the registry, one that does not resolve there, or a model whose weights fail their
    registered SHA-256."""
    from clickstream.models.registry.store import resolve_model

    uri = uri or settings.champion_uri
    model = resolve_model(settings, uri)
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        bundle = _downloaded_bundle(model, uri, Path(tmp), device)
    return dataclasses.replace(bundle, model_name=model.name, model_version=model.version)


def _downloaded_bundle(model: ResolvedModel, uri: str, folder: Path, device: str) -> ModelBundle:
    """The resolved model's artifacts downloaded under `folder` and loaded (torch is imported here,
    once the URI is known to resolve); ModelNotFoundError (one line) when they are no clickstream model."""
    from mlflow.exceptions import MlflowException

    from clickstream.models.bundle import WEIGHTS_SHA256, ModelBundle, WeightsChecksumError
    from clickstream.models.device import resolve_device
    from clickstream.models.registry.store import download_model

    local = download_model(model, uri, folder)
    if not (local / "MLmodel").exists():
        raise ModelNotFoundError(f"{uri} is not an MLflow model (no MLmodel file)")
    try:
        return ModelBundle.load(
            _artifacts(local), str(resolve_device(device)), weights_sha256=model.tags.get(WEIGHTS_SHA256)
        )
    except WeightsChecksumError as error:
        label = f"v{model.version}" if model.version.isdigit() else model.version
        raise ModelNotFoundError(f"model {model.name} {label} ({uri}) is not loaded: {error}") from None
    except KeyError as error:
        raise ModelNotFoundError(f"{uri} is not a clickstream model: it has no {error} artifact") from None
    except (MlflowException, OSError, ValueError, RuntimeError) as error:
        raise ModelNotFoundError(f"{uri} is not a clickstream model: {_first_line(error)}") from None


def _artifacts(model_dir: Path) -> dict[str, Path]:
    """The local paths of the artifacts a pyfunc model records in its MLmodel, by name."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    return {name: model_dir / spec["path"] for name, spec in flavor.get("artifacts", {}).items()}


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
