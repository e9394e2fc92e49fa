"""A registered model ready to score sequences: the LSTM plus the vocabulary it was
trained with, both read from the same MLflow model directory so they cannot drift apart.

Models load only from the configured tracking store (`settings.tracking_uri`): a
`models:/` URI, `runs:/<run id>/model`, or a bare run id. Local paths and other
artifact URLs are refused.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pytorch
import numpy as np
import polars as pl
import torch
from mlflow.exceptions import MlflowException

from clickstream.features.tensor_loader import load_tensors
from clickstream.features.vocabulary import Vocabulary
from clickstream.models.device import resolve_device
from clickstream.models.predict import predict, predict_steps
from clickstream.models.registry import tracking_client
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ModelNotFoundError
from clickstream.pipeline.core.tracking import redacted, require_store

if TYPE_CHECKING:
    from clickstream.models.lstm import BuyIntentLSTM

MODEL_ARTIFACT = "model"  # the model's folder inside its run
VOCABULARY_FOLDER = "extra_files"  # where mlflow.pytorch puts `extra_files` inside the model folder
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>(?!.*\.\.)[\w./-]+)$")  # no `..`: stays in the run


@dataclass
class Scorer:
    """One model version with its vocabulary; scoring is deterministic (eval mode, no dropout)."""

    model_name: str
    model_version: str
    model: BuyIntentLSTM
    vocabulary: Vocabulary
    device: str = "cpu"

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        """Buy probability per session: float32 in [0, 1], in the frame's row order.

        The sessions are scored in (session_id, session_start) order, whatever order the rows
        come in, so the same sessions get bit-identical scores in any row order: a batch holds
        sessions of one length in scoring order (predict.equal_length_batches), and a matrix
        product may round a row differently at another position in its batch. A session scored
        among other sessions (another day, a one-session trace) may differ by a few float32
        ulps (about 3e-8 near 0.5)."""
        order = sequences.select(pl.arg_sort_by("session_id", "session_start")).to_series().to_numpy().astype(np.int64)
        tensors = load_tensors(sequences, self.vocabulary).select(torch.from_numpy(order))
        scores = np.empty(sequences.height, dtype=np.float32)
        scores[order] = predict(self.model, tensors, device=self.device)
        return scores

    def running_scores(self, sequences: pl.DataFrame) -> np.ndarray:
        """Buy probability after each event: float32 in [0, 1], flat (row order, then event order)."""
        return predict_steps(self.model, load_tensors(sequences, self.vocabulary), device=self.device)


def load_scorer(settings: Settings, model_uri: str | None = None, *, device: str = "auto") -> Scorer:
    """The model behind `model_uri` (default `models:/<settings.model_name>@champion`) from
    settings.tracking_uri, ready to score on `device`. Raises ModelNotFoundError (one line)
    for a URI outside the registry or one that does not resolve there."""
    uri = model_uri or f"models:/{settings.model_name}@{CHAMPION}"
    name, version, artifact_uri = _resolve(settings, uri)
    with tempfile.TemporaryDirectory(prefix="clickstream-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp))
        except (MlflowException, OSError) as error:
            raise ModelNotFoundError(f"cannot download model {uri}: {_first_line(error)}") from None
        if not (local / "MLmodel").exists():
            raise ModelNotFoundError(f"{uri} is not an MLflow model (no MLmodel file)")
        try:
            model = mlflow.pytorch.load_model(str(local), map_location="cpu").eval()
            vocabulary = Vocabulary.load(local / VOCABULARY_FOLDER)
        except (MlflowException, OSError, ValueError) as error:
            raise ModelNotFoundError(f"{uri} is not a clickstream model: {_first_line(error)}") from None
    return Scorer(name, version, model, vocabulary, str(resolve_device(device)))


def _resolve(settings: Settings, uri: str) -> tuple[str, str, str]:
    """(model name, version label, artifact URI) for a registry or run URI; refuses anything else."""
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
            return name, str(found.version), f"models:/{name}/{found.version}"
        client.get_run(runs["run"])
        versions = client.search_model_versions(f"run_id='{runs['run']}'")
        registered = [v for v in versions if v.name == settings.model_name]
        label = str(registered[0].version) if registered else f"run-{runs['run']}"
        return settings.model_name, label, uri
    except MlflowException as error:
        raise ModelNotFoundError(f"model {uri} not found in {store}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
