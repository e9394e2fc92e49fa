"""What a training run learns from: the window's labelled sessions at a pinned `sequences` version,
as shard units split by time into training and validation days, with their counts, the guards
that refuse a split no trustworthy model can come from, the window's fingerprint, and the two
parts as MLflow datasets (the run's lineage).

Surveying the window reads it one shard unit at a time (models.training.shards): the counts,
the time split and a digest of every unit's rows come from that pass, never from the whole
window in memory.
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

from clickstream.features.sequences import refuse_stale
from clickstream.models.training.shards import Unit, read_unit, shard_units
from clickstream.pipeline.core.config import Settings, TrainConfig
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import SEQUENCES, with_strings


@dataclass(frozen=True)
class UnitSurvey:
    """The labelled sessions of one shard unit: how many, their events and start times, a digest."""

    unit: Unit
    sessions: int
    buyers: int
    events: int
    first_start: dt.datetime | None
    last_start: dt.datetime | None
    digest: str  # sha256 of the rows' hashes, in the unit's order


@dataclass(frozen=True)
class Part:
    """One side of the time split: its days, the units holding its sessions, their totals."""

    days: tuple[dt.date | None, dt.date | None]
    surveys: tuple[UnitSurvey, ...]  # the units holding its sessions, each with its counts
    sessions: int
    buyers: int
    events: int
    first_start: dt.datetime | None
    last_start: dt.datetime | None
    digest: str  # sha256 over its units' digests (sorted): the same rows, the same digest

    @classmethod
    def of(cls, days: tuple[dt.date | None, dt.date | None], surveys: list[UnitSurvey]) -> Part:
        starts = [s for survey in surveys for s in (survey.first_start, survey.last_start) if s is not None]
        digest = hashlib.sha256("\n".join(sorted(f"{s.unit.day}:{s.digest}" for s in surveys)).encode())
        return cls(
            days=days,
            surveys=tuple(surveys),
            sessions=sum(survey.sessions for survey in surveys),
            buyers=sum(survey.buyers for survey in surveys),
            events=sum(survey.events for survey in surveys),
            first_start=min(starts, default=None),
            last_start=max(starts, default=None),
            digest=digest.hexdigest(),
        )

    @property
    def units(self) -> tuple[Unit, ...]:
        return tuple(survey.unit for survey in self.surveys)


@dataclass(frozen=True)
class TrainingWindow:
    """A window's labelled sessions at one `sequences` version, split by time: the last days validate."""

    lake: str  # the lake the units are read from
    buckets: int | None
    window: tuple[dt.date | None, dt.date | None]  # None: unbounded and no data
    train: Part
    val: Part
    fingerprint: str
    sequences_version: int | None  # the `sequences` table version read (None: the table was never written)
    events_version: str  # the `events` version that sequences version was built from ("" when unknown)

    @property
    def validation(self) -> tuple[dt.date | None, dt.date | None]:
        return self.val.days

    @property
    def span(self) -> str:
        first, last = self.window
        return f"{first or '(first date)'}..{last or '(last date)'}" if first or last else "any date of sequences/"

    def open(self) -> Lake:
        """The lake the units are read from."""
        return Lake(self.lake, self.buckets)


def prepare(
    settings: Settings, config: TrainConfig, start: dt.date | None, end: dt.date | None, as_of: int | None = None
) -> TrainingWindow:
    """The labelled sessions starting in [start, end] (default: all of sequences) at table version
    `as_of` (default: the latest, refused while any of its dates is stale), split by time, with the
    fingerprint of the window, its data and the settings, and the table versions behind them.
    Guards run later, inside the run (check_trainable), so that a refused window leaves a FAILED
    run with its reason."""
    lake = Lake(settings.lake, settings.buckets)
    latest = lake.version("sequences")
    version = latest if as_of is None else as_of
    if version is not None and version == latest:
        refuse_stale(lake, start, end)
    units = shard_units(lake, lake.files("sequences", start, end, version)) if version is not None else []
    surveys = [survey_unit(lake, unit) for unit in units]
    labelled = [survey.unit.day for survey in surveys if survey.sessions]
    last = max(labelled, default=end)
    val_start = last - dt.timedelta(days=config.validation_days - 1) if last else None
    is_val = [val_start is not None and survey.unit.day >= val_start for survey in surveys]
    train = Part.of((start or min(labelled, default=None), val_start - dt.timedelta(days=1) if val_start else None),
                    [s for s, v in zip(surveys, is_val, strict=True) if not v and s.sessions])
    val = Part.of((val_start, last), [s for s, v in zip(surveys, is_val, strict=True) if v and s.sessions])
    window = (start or min(labelled, default=None), end or last)
    events = lake.commit_metadata("sequences", version).get("events_version", "") if version is not None else ""
    return TrainingWindow(
        lake=settings.lake,
        buckets=lake.buckets if version is not None else settings.buckets,
        window=window,
        train=train,
        val=val,
        fingerprint=fingerprint(settings, config, window, train, val),
        sequences_version=version,
        events_version=events,
    )


def survey_unit(lake: Lake, unit: Unit) -> UnitSurvey:
    """Read one unit and count its labelled sessions."""
    frame = read_unit(lake, unit)
    start = frame.get_column("session_start")
    return UnitSurvey(
        unit=unit,
        sessions=frame.height,
        buyers=int(frame.get_column("label").sum()),
        events=int(frame.get_column("n_events").sum()),
        first_start=start.min(),
        last_start=start.max(),
        digest=content_digest(frame),
    )


def check_trainable(window: TrainingWindow, config: TrainConfig) -> None:
    """TrainingError with the reason when the split cannot train and judge a model."""
    span = window.span
    train, val = window.train, window.val
    if not train.sessions and not val.sessions:
        raise TrainingError(f"no labelled sessions start in {span}; build sequences for it first")
    if not train.sessions:
        raise TrainingError(
            f"{span} holds no labelled sessions before its {config.validation_days} validation day(s); widen the window"
        )
    for name, part in (("training", train), ("validation", val)):
        if not part.sessions or part.buyers in (0, part.sessions):
            raise TrainingError(
                f"the {name} sessions ({part.sessions:,}) hold a single class ({part.buyers:,} buyers); "
                "a model cannot be trained or judged on them"
            )
        if part.buyers < config.min_positives:
            raise TrainingError(
                f"only {part.buyers} buyers in the {name} sessions; at least {config.min_positives} are needed"
            )


# TrainConfig fields that say where and how a run executes, not what it learns: left out of the fingerprint
WHERE_IT_RUNS = ("device", "cpu_threads", "memory_mb")


def fingerprint(
    settings: Settings, config: TrainConfig, window: tuple[dt.date | None, dt.date | None], train: Part, val: Part
) -> str:
    """sha256 of the window, its labelled sessions' content and the settings (where it runs excluded)."""
    described = json.dumps(
        {
            "window": [str(day) for day in window],
            "model": dataclasses.asdict(settings.model),
            "train": {k: v for k, v in dataclasses.asdict(config).items() if k not in WHERE_IT_RUNS},
            "sequences": dataclasses.asdict(settings.sequences),
            "data": [train.digest, val.digest],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()


def content_digest(sessions: pl.DataFrame) -> str:
    """sha256 (hex) of the sessions' rows, in order, independent of how a process numbers categories."""
    return hashlib.sha256(with_strings(sessions).hash_rows(seed=0).to_numpy().tobytes()).hexdigest()


def datasets(settings: Settings, window: TrainingWindow) -> dict[str, mlflow.data.Dataset]:
    """The training and validation sessions as MLflow datasets (by context: "training", "validation"):
    metadata only (the `sequences` Delta table and the version read, the days, a digest of the
    rows, the schema), no copy."""
    source = DeltaDatasetSource(
        path=window.open().table_uri("sequences"), delta_table_version=window.sequences_version
    )
    schema = sequences_schema()
    parts = {"training": window.train, "validation": window.val}
    return {
        context: MetaDataset(
            source, name=f"sequences {part.days[0]}..{part.days[1]}", digest=part.digest[:32], schema=schema
        )
        for context, part in parts.items()
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
