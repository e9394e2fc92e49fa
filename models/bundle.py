"""A trained model as plain files: the LSTM's weights (a state_dict) and sizes, the vocabulary
it was trained with, its calibration and the sequence settings its input is built with.

These files are the artifacts of the registered MLflow model, and every score comes from a
ModelBundle loaded from them: `clickstream score` (models.registry.loading) and MLflow's own clients
(models.pyfunc) alike, so both give the same scores for the same sessions. No pickled module:
the weights load into a BuyIntentLSTM built from the recorded sizes.

Integrity: `save` records the SHA-256 of the weights file in network.json (registration also
records it as the version's `weights_sha256` tag, models.registry.packaging), and `load` hashes the file
before reading it: weights that differ from either record raise WeightsChecksumError, never
load. The vocabulary and the calibration are checked by their own loaders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from clickstream.features.tensor_loader import load_tensors
from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.features.vocabulary import Vocabulary
from clickstream.models.calibration import Calibration
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict, predict_steps
from clickstream.models.torch_files import save_torch
from clickstream.pipeline.core.config import ModelConfig, SequenceConfig
from clickstream.pipeline.core.schemas import EVENT_TYPES

# artifact name -> file or folder name
ARTIFACTS = {
    "weights": "weights.pt",
    "network": "network.json",
    "vocabulary": "vocabulary",
    "calibration": "calibration.json",
    "sequences": "sequences.json",
}
# ModelConfig fields added after versions had been registered, at the value those versions were built with
CONFIG_BEFORE_FIELDS = {"head_linear": False}
# the SHA-256 (hex) of the weights file: a key of network.json, of the MLmodel's metadata and a registered-version tag
WEIGHTS_SHA256 = "weights_sha256"


class WeightsChecksumError(ValueError):
    """The weights file is not the one recorded when the model was saved or registered."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """The LSTM (eval mode), its vocabulary, its calibration and its sequence settings; loaded from the
    registry (models.registry.loading), also which model version it is: what scores a frame."""

    model: BuyIntentLSTM
    vocabulary: Vocabulary
    calibration: Calibration
    sequences: SequenceConfig
    device: str = "cpu"
    model_name: str = ""  # the registered model's name and version; empty for one not loaded from the registry
    model_version: str = ""

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        """Calibrated buy probability per session of a SEQUENCES frame: float32 in [0, 1], row order.

        The sessions are scored in (session_id, session_start) order, whatever order the rows
        come in, so the same sessions get bit-identical scores in any row order: a batch holds
        sessions of one length in scoring order (predict.equal_length_batches), and a matrix
        product may round a row differently at another position in its batch. A session scored
        among other sessions (another day, a one-session trace) may differ by a few float32
        ulps (about 3e-8 near 0.5)."""
        keys = [name for name in ("session_id", "session_start") if name in sequences.columns]
        order = sequences.select(pl.arg_sort_by(keys)).to_series().to_numpy().astype(np.int64)
        tensors = load_tensors(sequences, self.vocabulary).select(torch.from_numpy(order))
        scores = np.empty(sequences.height, dtype=np.float32)
        scores[order] = predict(self.model, tensors, calibration=self.calibration, device=self.device)
        return scores

    def running_scores(self, sequences: pl.DataFrame) -> np.ndarray:
        """Calibrated buy probability after each event: float32 in [0, 1], flat (row order, then event order)."""
        tensors = load_tensors(sequences, self.vocabulary)
        return predict_steps(self.model, tensors, calibration=self.calibration, device=self.device)

    def save(self, folder: Path) -> dict[str, Path]:
        """Write the bundle's files into `folder`; returns them by ARTIFACTS name."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / file for name, file in ARTIFACTS.items()}
        save_torch({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, paths["weights"])
        network = {
            "config": dataclasses.asdict(self.model.config),
            "n_items": self.model.item.num_embeddings,
            "n_categories": self.model.category.num_embeddings,
            "n_event_types": self.model.event_type.num_embeddings,
            "continuous_features": list(CONTINUOUS_FEATURES[: self.model.n_continuous]),
            WEIGHTS_SHA256: file_sha256(paths["weights"]),
        }
        paths["network"].write_text(json.dumps(network, indent=2))
        self.vocabulary.save(paths["vocabulary"])
        self.calibration.save(paths["calibration"])
        paths["sequences"].write_text(json.dumps(dataclasses.asdict(self.sequences), indent=2))
        return paths

    @classmethod
    def load(
        cls, artifacts: Mapping[str, str | Path], device: str = "cpu", *, weights_sha256: str | None = None
    ) -> ModelBundle:
        """The bundle whose files `artifacts` names (by ARTIFACTS name, as MLflow hands them over).
        KeyError for a missing artifact, ValueError for files that do not fit together,
        WeightsChecksumError (a ValueError) when the weights file's SHA-256 differs from the one
        network.json records or from `weights_sha256` (the registry's record). A model saved before
        checksums existed records none: it loads unchecked unless `weights_sha256` is given."""
        paths = {name: Path(artifacts[name]) for name in ARTIFACTS}
        network = json.loads(paths["network"].read_text())
        _check_weights(paths["weights"], {"network.json": network.get(WEIGHTS_SHA256), "the registry": weights_sha256})
        trained_on = tuple(network["continuous_features"])
        if trained_on != CONTINUOUS_FEATURES[: len(trained_on)]:
            raise ValueError("the model was trained on other continuous features than this code computes")
        if network["n_event_types"] != len(EVENT_TYPES) + 1:
            raise ValueError("the model was trained on other event types than this code knows")
        model = BuyIntentLSTM(
            ModelConfig(**{**CONFIG_BEFORE_FIELDS, **network["config"]}),
            network["n_items"],
            network["n_categories"],
            network["n_event_types"],
            len(trained_on),
        )
        model.load_state_dict(torch.load(paths["weights"], map_location="cpu", weights_only=True))
        vocabulary = Vocabulary.load(paths["vocabulary"])
        if (vocabulary.n_items, vocabulary.n_categories) != (network["n_items"], network["n_categories"]):
            raise ValueError("the vocabulary does not match the model's embedding tables")
        sequences = json.loads(paths["sequences"].read_text())
        sequences["exclude_event_types"] = tuple(sequences["exclude_event_types"])
        calibration = Calibration.load(paths["calibration"])
        return cls(model.eval(), vocabulary, calibration, SequenceConfig(**sequences), device)


def _check_weights(path: Path, recorded: dict[str, str | None]) -> None:
    """WeightsChecksumError unless the file's SHA-256 equals every recorded one (None: not recorded there)."""
    expected = {where: str(value).lower() for where, value in recorded.items() if value is not None}
    if not expected:
        return
    actual = file_sha256(path)
    differs = [where for where, value in expected.items() if value != actual]
    if differs:
        raise WeightsChecksumError(
            f"its weights file {path.name} has SHA-256 {actual[:12]}..., not the {expected[differs[0]][:12]}... "
            f"recorded in {' and '.join(differs)}: the stored copy is damaged or was altered"
        )
