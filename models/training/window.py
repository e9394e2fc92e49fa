"""What a training run learns from: the window's labelled sessions split by time into training
and validation days, the guards that refuse a split no trustworthy model can come from, the
window's fingerprint, and the two parts as MLflow datasets (the run's lineage).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import mlflow.data
import polars as pl
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types.schema import Array, ColSpec, Schema

from clickstream.features.sequences import read_sequences
from clickstream.pipeline.core.config import Settings, TrainConfig
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import SEQUENCES, with_strings


@dataclass(frozen=True)
class Split:
    """The window's labelled sessions split by time: the last days validate."""

    window: tuple[dt.date | None, dt.date | None]  # None: unbounded and no data
    validation: tuple[dt.date | None, dt.date | None]
    train: pl.DataFrame
    val: pl.DataFrame

    @property
    def span(self) -> str:
        first, last = self.window
        return f"{first or '(first date)'}..{last or '(last date)'}" if first or last else "any date of sequences/"


@dataclass(frozen=True)
class TrainingData:
    """A window's split and its fingerprint."""

    split: Split
    fingerprint: str
    sequences_version: int | None  # the `sequences` table version read (None: the table was never written)
    events_version: str  # the `events` version that sequences version was built from ("" when unknown)


def prepare(
    settings: Settings, config: TrainConfig, start: dt.date | None, end: dt.date | None, as_of: int | None = None
) -> TrainingData:
    """The labelled sessions starting in [start, end] (default: all of sequences) at table version
    `as_of` (default: the latest), split by time, with the fingerprint of the window, its data and
    the settings, and the table versions behind them. Guards run later, inside the run
    (check_trainable), so that a refused window leaves a FAILED run with its reason."""
    lake = Lake(settings.lake, settings.buckets)
    version = lake.version("sequences") if as_of is None else as_of
    frame = read_sequences(lake, start, end, version=version)
    labelled = frame.filter(frame["label"].is_not_null())
    split = split_window(labelled, start, end, config.validation_days)
    events = lake.commit_metadata("sequences", version).get("events_version", "") if version is not None else ""
    return TrainingData(split, fingerprint(settings, config, split, labelled), version, events)


def split_window(labelled: pl.DataFrame, start: dt.date | None, end: dt.date | None, validation_days: int) -> Split:
    """Sessions starting on the last `validation_days` days up to the newest labelled one
    validate; earlier ones train. Window ends default to the data's first and last days."""
    days = labelled["session_start"].dt.date()
    last = days.max() if len(days) else end
    val_start = last - dt.timedelta(days=validation_days - 1) if last else None
    is_val = pl.col("session_start").dt.date() >= val_start if val_start else pl.lit(False)
    return Split(
        window=(start or days.min(), end or last),
        validation=(val_start, last),
        train=labelled.filter(~is_val),
        val=labelled.filter(is_val),
    )


def check_trainable(split: Split, config: TrainConfig) -> None:
    """TrainingError with the reason when the split cannot train and judge a model."""
    window = split.span
    if split.train.is_empty() and split.val.is_empty():
        raise TrainingError(f"no labelled sessions start in {window}; build sequences for it first")
    if split.train.is_empty():
        raise TrainingError(
            f"{window} holds no labelled sessions before its {config.validation_days} validation day(s); "
            "widen the window"
        )
    for name, part in (("training", split.train), ("validation", split.val)):
        buyers = int(part["label"].sum())
        if part.is_empty() or buyers in (0, part.height):
            raise TrainingError(
                f"the {name} sessions ({part.height:,}) hold a single class ({buyers:,} buyers); "
                "a model cannot be trained or judged on them"
            )
        if buyers < config.min_positives:
            raise TrainingError(
                f"only {buyers} buyers in the {name} sessions; at least {config.min_positives} are needed"
            )


def fingerprint(settings: Settings, config: TrainConfig, split: Split, labelled: pl.DataFrame) -> str:
    """sha256 of the window, its labelled sessions' content and the settings (where it runs excluded:
    device and CPU threads)."""
    described = json.dumps(
        {
            "window": [str(day) for day in split.window],
            "model": dataclasses.asdict(settings.model),
            "train": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("device", "cpu_threads")},
            "sequences": dataclasses.asdict(settings.sequences),
            "data": content_digest(labelled),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()


def content_digest(sessions: pl.DataFrame) -> str:
    """sha256 (hex) of the sessions' rows, in order, independent of how a process numbers categories."""
    return hashlib.sha256(with_strings(sessions).hash_rows(seed=0).to_numpy().tobytes()).hexdigest()


def datasets(settings: Settings, data: TrainingData) -> dict[str, mlflow.data.Dataset]:
    """The training and validation sessions as MLflow datasets (by context: "training", "validation"):
    metadata only (the `sequences` Delta table and the version read, the days, a digest of the
    rows, the schema), no copy."""
    split = data.split
    source = DeltaDatasetSource(
        path=Lake(settings.lake, settings.buckets).table_uri("sequences"), delta_table_version=data.sequences_version
    )
    schema = sequences_schema()
    train_end = split.validation[0] - dt.timedelta(days=1) if split.validation[0] else None
    parts = {"training": (split.train, split.window[0], train_end), "validation": (split.val, *split.validation)}
    return {
        context: MetaDataset(source, name=f"sequences {first}..{last}", digest=content_digest(part)[:32], schema=schema)
        for context, (part, first, last) in parts.items()
    }


def sequences_schema() -> Schema:
    """The SEQUENCES columns in MLflow types."""

    def mlflow_type(dtype: pl.DataType) -> object:
        if isinstance(dtype, pl.List):
            return Array(mlflow_type(dtype.inner))
        if isinstance(dtype, pl.Datetime):
            return "datetime"
        names = ((pl.String, "string"), (pl.Categorical, "string"), (pl.Boolean, "boolean"), (pl.Float32, "float"))
        return next((name for polars_type, name in names if dtype == polars_type), "long")

    return Schema([ColSpec(mlflow_type(dtype), name) for name, dtype in SEQUENCES.items()])
