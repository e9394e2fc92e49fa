"""What a registered version holds: a trained model's ModelBundle files as the artifacts of an MLflow
pyfunc (models.pyfunc.BuyIntentModel), with a signature that says what `predict` reads and returns,
an input example, the project's code and pinned requirements, logged to the active run; store.register
then makes it a new version of `clickstream-buy-intent`.

The SHA-256 of the weights file travels three ways: in the bundle's network.json, in the MLmodel's
metadata (`weights_sha256`) and, at registration, as the version's `weights_sha256` tag
(models.bundle.WEIGHTS_SHA256); every load checks the file against them (models.bundle).

The code travels as the installed namespace (`clickstream/pipeline`, `clickstream/features`,
`clickstream/models`), so the model loads in a fresh process, one without the project
installed or one with unrelated top-level `models` or `features` packages.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

from clickstream.models.bundle import WEIGHTS_SHA256, file_sha256
from clickstream.models.pyfunc import BuyIntentModel, input_example
from clickstream.models.registry.store import MODEL_ARTIFACT

if TYPE_CHECKING:
    import polars as pl
    from mlflow.models.model import ModelInfo

    from clickstream.models.bundle import ModelBundle

PACKAGES = ("pipeline", "features", "models")  # shipped with the model, as clickstream.*
EXAMPLE_SESSIONS = 5


def log_model(bundle: ModelBundle, example_sessions: pl.DataFrame) -> ModelInfo:
    """Log `bundle` as the pyfunc `model` of the active run; the input example is the first
    EXAMPLE_SESSIONS of `example_sessions`. The returned info's model_id names the MLflow 3
    logged model that evaluation metrics are linked to; its metadata holds the weights' SHA-256
    (weights_sha256(), for the registered version's tag)."""
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        artifacts = bundle.save(Path(tmp) / "bundle")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=BuyIntentModel(),
            artifacts={name: str(path) for name, path in artifacts.items()},
            code_paths=[str(code_package(Path(tmp) / "code"))],
            signature=signature(),
            input_example=input_example(example_sessions.head(EXAMPLE_SESSIONS)),
            pip_requirements=requirements(),
            metadata={WEIGHTS_SHA256: file_sha256(artifacts["weights"])},
        )


def weights_sha256(logged: ModelInfo) -> str:
    """The SHA-256 of the logged model's weights file, as log_model recorded it."""
    return str((logged.metadata or {})[WEIGHTS_SHA256])


def signature() -> ModelSignature:
    """What `predict` reads (models.pyfunc's two input forms) and returns. The columns whose type
    depends on the form (a list per session or a value per event) and the timestamps (aware,
    naive or ISO strings) are `Any`; form-specific ones are optional, the pyfunc checks that one
    form is complete. Other columns, such as the rest of a sequences/ row, are ignored."""
    anything = AnyType()
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, "session_id"),
                ColSpec(anything, "item_id"),  # sessions: list of item ids; events: one item id
                ColSpec(anything, "category"),  # sessions: list of categories (null items); events: one or null
                ColSpec(anything, "event_type"),  # sessions: list of EVENT_TYPE_CODE; events: a name
                ColSpec(Array(DataType.double), "log_gap_prev", required=False),  # sessions
                ColSpec(DataType.long, "start_hour", required=False),  # sessions
                ColSpec(anything, "session_start", required=False),  # sessions, instead of start_hour
                ColSpec(anything, "ts", required=False),  # events
            ]
        ),
        outputs=Schema([ColSpec(DataType.string, "session_id"), ColSpec(DataType.float, "score")]),
    )


def requirements() -> list[str]:
    """Pinned runtime requirements of the logged model (no slow inference of them by MLflow)."""
    return [
        f"{package}=={importlib.metadata.version(package).split('+')[0]}"
        for package in ("torch", "polars", "pyarrow", "numpy", "pandas", "scipy", "mlflow")
    ]


def code_package(folder: Path) -> Path:
    """A copy of the project's code laid out as its installed namespace (`clickstream/pipeline`, ...),
    so the shipped model imports `clickstream.models...` and never a top-level `models`."""
    repo = Path(__file__).resolve().parents[2]  # the project root: this file is models/registry/packaging.py
    package = folder / "clickstream"
    for name in PACKAGES:
        shutil.copytree(repo / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package
