"""Tuned training settings kept with the lake: `<lake>/_config/training.json`.

`clickstream tune` writes the best model and training settings it found there (atomically);
`train_challenger` (so `clickstream train` and the nightly DAG) reads them back on top of the
defaults. The file carries the feature signature it was tuned for: a hash of the model's
inputs (features.tensors.feature_schema, the `feature_schema` tag of every registered version;
the session inputs; the fixed categories) and of the sequence settings that shape them.
Settings tuned for another signature are never applied: training then logs one warning line
and keeps the defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from clickstream.features.tensor_loader import feature_schema
from clickstream.features.vocabulary import FIXED_CATEGORIES
from clickstream.models.lstm import SESSION_INPUTS
from clickstream.pipeline.core.config import ModelConfig, Settings, TrainConfig
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake

TUNED_FILE = "training.json"
TUNED_TRAIN_FIELDS = ("learning_rate", "weight_decay", "batch_size", "grad_clip")  # never epochs, seeds, days
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TunedSettings:
    """Model and training settings found by a search, and what they were found on."""

    signature: str
    model: dict[str, Any]
    train: dict[str, Any]
    val_auc: float
    default_val_auc: float
    window: tuple[str, str]
    trials: int
    run_id: str


def feature_signature(settings: Settings) -> str:
    """12 hex digits naming the feature schema a model is fitted on: equal inputs, equal signature."""
    schema = {
        "feature_schema": feature_schema(),  # the per-event inputs, as registered with every version
        "session_inputs": SESSION_INPUTS,
        "fixed_categories": FIXED_CATEGORIES,
        "sequences": dataclasses.asdict(settings.sequences),
    }
    return hashlib.sha256(json.dumps(schema, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_tuned(settings: Settings, tuned: TunedSettings) -> str:
    """Replace the lake's tuned settings with `tuned`, atomically; returns the file's path."""
    lake = Lake(settings.lake, settings.buckets)
    text = json.dumps(dataclasses.asdict(tuned), indent=2, sort_keys=True) + "\n"
    return lake.write_bytes(lake.config_file(TUNED_FILE), text.encode())


def read_tuned(settings: Settings) -> TunedSettings | None:
    """The lake's tuned settings, or None when there are none. A file that is not valid tuned
    settings is a ClickstreamError naming it."""
    lake = Lake(settings.lake, settings.buckets)
    path = lake.config_file(TUNED_FILE)
    if not lake.fs.exists(path):
        return None
    try:
        with lake.fs.open(path, "rb") as handle:
            content = json.loads(handle.read())
        tuned = TunedSettings(**{**content, "window": tuple(content["window"])})
        dataclasses.replace(ModelConfig(), **tuned.model)
        if not set(tuned.train) <= set(TUNED_TRAIN_FIELDS):
            raise KeyError(f"training fields other than {', '.join(TUNED_TRAIN_FIELDS)}")
        dataclasses.replace(TrainConfig(), **tuned.train)
    except (ValueError, TypeError, KeyError) as error:
        raise ClickstreamError(f"{path} is not valid tuned settings ({error}); remove it or re-run tune") from None
    return tuned


def with_tuned(settings: Settings) -> Settings:
    """`settings` with the lake's tuned model and training settings applied, when they were
    tuned for this feature signature; unchanged (after one warning line) when not, or when none."""
    tuned = read_tuned(settings)
    if tuned is None:
        return settings
    signature = feature_signature(settings)
    if tuned.signature != signature:
        log.warning(
            "tuned settings in %s were tuned for features %s, these are %s: training with the defaults",
            Lake(settings.lake, settings.buckets).config_file(TUNED_FILE),
            tuned.signature,
            signature,
        )
        return settings
    return dataclasses.replace(
        settings,
        model=dataclasses.replace(settings.model, **tuned.model),
        train=dataclasses.replace(settings.train, **tuned.train),
    )
