"""`clickstream train`: one training window in, one registered challenger out.

train_challenger reads the labelled sessions that start in the window, holds out the
last `validation_days` days (a time-ordered split), builds the vocabulary from the
training days only, fits the LSTM, fits the LightGBM baseline on the same split, logs
everything to one MLflow run and registers the model as a new version of
`clickstream-buy-intent` with alias `challenger`. A failed guard (empty window, one
class, too few buyers, NaN loss) ends the run FAILED with the reason and leaves the
aliases alone.

Re-running: every version carries a fingerprint of its window, the window's data and
the settings. Re-running a window whose data and settings are unchanged re-uses that
version (alias `challenger` goes back to it) instead of training a duplicate; a changed
day in the window trains a new version. `resume=True` continues the window's
interrupted run (same MLflow run, last checkpoint) after a kill. Checkpoints live in
`settings.checkpoints`, storage every worker sees, so a retry on another machine resumes too.
`gpus` > 1 trains data-parallel on that many local processes (models.distributed); the
launching process evaluates and registers, once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.pytorch
import numpy as np
import polars as pl
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

from clickstream.features.sequences import read_sequences
from clickstream.features.tensor_loader import feature_schema, load_tensors
from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.features.vocabulary import build_vocabulary
from clickstream.models.baseline import fit_baseline
from clickstream.models.champion import actor, gate_challenger
from clickstream.models.checkpoints import CheckpointStore
from clickstream.models.distributed import check_ranks, fit_ranks
from clickstream.models.evaluation import evaluate, write_plots
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict
from clickstream.models.promotion import Decision
from clickstream.models.registry import (
    FEATURE_SCHEMA_TAG,
    FINGERPRINT_TAG,
    VAL_END_TAG,
    VAL_START_TAG,
    WINDOW_TAG,
    experiment_id,
    set_challenger,
    tracking_client,
    version_with_fingerprint,
)
from clickstream.models.tuned import with_tuned
from clickstream.pipeline.core.config import CHALLENGER, Settings, TrainConfig
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import EVENT_TYPES, SEQUENCES, with_strings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from clickstream.models.fit import EpochStats

PACKAGES = ("pipeline", "features", "models")  # shipped with the model, as clickstream.*, so it loads anywhere


@dataclass(frozen=True)
class TrainSummary:
    """A registered challenger and how it compares with the baseline (and the champion, if gated)."""

    model_name: str
    version: str
    run_id: str
    window: tuple[dt.date, dt.date]
    validation: tuple[dt.date, dt.date]
    train_sessions: int
    val_sessions: int
    val_auc: float
    gbm_val_auc: float
    best_epoch: int
    reused: bool = False
    promotion: Decision | None = None

    def __str__(self) -> str:
        status = "re-used (same window, data and settings)" if self.reused else f"registered as {CHALLENGER}"
        text = (
            f"{self.model_name} v{self.version} {status}: trained {self.window[0]}..{self.window[1]} on "
            f"{self.train_sessions:,} sessions, validated on {self.val_sessions:,} "
            f"({self.validation[0]}..{self.validation[1]}); val AUC LSTM {self.val_auc:.4f} vs GBM "
            f"{self.gbm_val_auc:.4f}"
        )
        return f"{text}; {self.promotion}" if self.promotion else text


def train_and_register(
    settings: Settings,
    start: dt.date | None,
    end: dt.date | None,
    *,
    epochs: int | None = None,
    device: str = "auto",
    promote: bool = False,
    resume: bool = False,
    gpus: int = 1,
) -> TrainSummary:
    """train_challenger, then with `promote` the champion gate on the challenger's validation days."""
    summary = train_challenger(settings, start, end, epochs=epochs, device=device, resume=resume, gpus=gpus)
    if not promote:
        return summary
    decision = gate_challenger(settings, summary.version, *summary.validation, decided_by=actor("cli:train"))
    return dataclasses.replace(summary, promotion=decision)


def train_challenger(
    settings: Settings,
    start: dt.date | None,
    end: dt.date | None,
    *,
    epochs: int | None = None,
    device: str = "auto",
    resume: bool = False,
    gpus: int = 1,
) -> TrainSummary:
    """Train on the labelled sessions starting in [start, end] (default: all of sequences/),
    register the model with alias `challenger` and return the summary.

    Idempotent per (window, data, settings): an existing version with the same fingerprint
    is re-used. Raises TrainingError (run marked FAILED, aliases untouched) when the window
    cannot yield a trustworthy model. Tuned settings in the lake (models.tuned) apply on top of
    `settings` when they were tuned for the same features.
    """
    settings = with_tuned(settings)
    if gpus != 1:
        check_ranks(gpus, device)
    config = dataclasses.replace(settings.train, epochs=epochs or settings.train.epochs, device=device)
    frame = read_sequences(Lake(settings.lake), start, end)
    labelled = frame.filter(frame["label"].is_not_null())
    split = split_window(labelled, start, end, config.validation_days)
    fingerprint = _fingerprint(settings, config, split, labelled)
    client = tracking_client(settings)
    existing = version_with_fingerprint(settings, fingerprint)
    if existing is not None:
        set_challenger(settings, str(existing.version))
        return _summary(client, settings.model_name, str(existing.version), reused=True)

    run_id = _unfinished_run(client, fingerprint) if resume else None
    with mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id(client), run_name=f"train {split.span}"
    ) as run:
        mlflow.set_tags({FINGERPRINT_TAG: fingerprint, "device": device})
        try:
            version = _train_in_run(settings, config, split, fingerprint, resume, gpus)
        except TrainingError as error:
            mlflow.set_tag("failure_reason", str(error))
            raise  # leaving the `with` marks the run FAILED
    return _summary(client, settings.model_name, version, reused=False, run_id=run.info.run_id)


@dataclass(frozen=True)
class _Split:
    """The window's labelled sessions split by time: the last days validate."""

    window: tuple[dt.date | None, dt.date | None]  # None: unbounded and no data
    validation: tuple[dt.date | None, dt.date | None]
    train: pl.DataFrame
    val: pl.DataFrame

    @property
    def span(self) -> str:
        first, last = self.window
        return f"{first or '(first date)'}..{last or '(last date)'}" if first or last else "any date of sequences/"


def split_window(labelled: pl.DataFrame, start: dt.date | None, end: dt.date | None, validation_days: int) -> _Split:
    """Sessions starting on the last `validation_days` days up to the newest labelled one
    validate; earlier ones train. Window ends default to the data's first and last days."""
    days = labelled["session_start"].dt.date()
    last = days.max() if len(days) else end
    val_start = last - dt.timedelta(days=validation_days - 1) if last else None
    is_val = pl.col("session_start").dt.date() >= val_start if val_start else pl.lit(False)
    return _Split(
        window=(start or days.min(), end or last),
        validation=(val_start, last),
        train=labelled.filter(~is_val),
        val=labelled.filter(is_val),
    )


def check_trainable(split: _Split, config: TrainConfig) -> None:
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


def _train_in_run(
    settings: Settings, config: TrainConfig, split: _Split, fingerprint: str, resume: bool, gpus: int
) -> str:
    """Fit, evaluate, log and register inside the active MLflow run; returns the new version."""
    mlflow.log_params({**_params(settings, config, split), "gpus": gpus})
    check_trainable(split, config)

    vocabulary = build_vocabulary(split.train, settings.sequences)
    # out of fold: a training session's own label never feeds its buy-rate inputs
    train = load_tensors(split.train, vocabulary, out_of_fold=True)
    val = load_tensors(split.val, vocabulary)
    mlflow.log_params(
        {
            "vocabulary_version": vocabulary.version,
            "n_items": vocabulary.n_items,
            "n_categories": vocabulary.n_categories,
            "train_events": int(train.item.numel()),
        }
    )
    torch.manual_seed(config.seed)
    model = BuyIntentLSTM(
        settings.model, vocabulary.n_items, vocabulary.n_categories, len(EVENT_TYPES) + 1, len(CONTINUOUS_FEATURES)
    )
    checkpoints = CheckpointStore(f"{settings.checkpoints}/{fingerprint[:16]}")
    result = fit_ranks(
        train, val, model, config, ranks=gpus, checkpoint_dir=checkpoints.folder, resume=resume, on_epoch=_log_epoch
    )

    labels, lengths = split.val["label"].to_numpy(), split.val["n_events"].to_numpy()
    lstm_scores = predict(result.model, val, device=result.device)
    gbm_scores = fit_baseline(split.train, split.val, seed=config.seed).predict(split.val)
    if not np.isfinite(lstm_scores).all():
        raise TrainingError("the trained model gives non-finite scores on the validation sessions")
    mlflow.log_metrics(
        {
            **evaluate(labels, lstm_scores, lengths).metrics("val_"),
            **evaluate(labels, gbm_scores, lengths).metrics("gbm_val_"),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
        }
    )
    mlflow.set_tag("trained_on", result.device)

    with tempfile.TemporaryDirectory(prefix="clickstream-run-") as tmp:
        plots, vocabulary_dir = Path(tmp) / "plots", Path(tmp) / "vocabulary"
        write_plots(labels, {"LSTM": lstm_scores, "GBM": gbm_scores}, plots)
        mlflow.log_artifacts(str(plots), "plots")
        vocabulary_files = vocabulary.save(vocabulary_dir)
        mlflow.log_artifacts(str(vocabulary_dir), "vocabulary")
        info = mlflow.pytorch.log_model(
            result.model,
            name="model",
            serialization_format="pickle",
            code_paths=[str(_code_package(Path(tmp) / "code"))],
            extra_files=[str(path) for path in vocabulary_files],
            signature=_signature(),
            pip_requirements=_requirements(),
        )
    version = mlflow.register_model(
        info.model_uri,
        settings.model_name,
        tags={
            FINGERPRINT_TAG: fingerprint,
            VAL_START_TAG: split.validation[0].isoformat(),
            VAL_END_TAG: split.validation[1].isoformat(),
            WINDOW_TAG: f"{split.window[0]}..{split.window[1]}",
            FEATURE_SCHEMA_TAG: feature_schema(),
        },
    )
    set_challenger(settings, str(version.version))
    checkpoints.clear()  # the registered version supersedes them
    return str(version.version)


def _log_epoch(stats: EpochStats) -> None:
    mlflow.log_metrics(
        {
            f"epoch_{name}": float(getattr(stats, name))
            for name in ("train_loss", "val_auc", "val_logloss", "seconds", "sessions_per_s")
        },
        step=stats.epoch,
    )


def _params(settings: Settings, config: TrainConfig, split: _Split) -> dict[str, object]:
    """Run parameters: the data window and split, and every model, training and sequence setting."""
    return {
        "window_start": split.window[0],
        "window_end": split.window[1],
        "train_start": split.train["session_start"].min(),
        "train_end": split.train["session_start"].max(),
        "val_start": split.validation[0],
        "val_end": split.validation[1],
        "train_sessions": split.train.height,
        "val_sessions": split.val.height,
        "train_buyers": int(split.train["label"].sum()),
        "val_buyers": int(split.val["label"].sum()),
        "code_version": code_version(),
        **{f"model_{k}": v for k, v in dataclasses.asdict(settings.model).items()},
        **{f"train_{k}": v for k, v in dataclasses.asdict(config).items() if k != "device"},
        **{f"sequences_{k}": v for k, v in dataclasses.asdict(settings.sequences).items()},
    }


def _fingerprint(settings: Settings, config: TrainConfig, split: _Split, labelled: pl.DataFrame) -> str:
    """sha256 of the window, its labelled sessions' content and the settings (device excluded)."""
    rows = with_strings(labelled).hash_rows(seed=0).to_numpy().tobytes()
    described = json.dumps(
        {
            "window": [str(day) for day in split.window],
            "model": dataclasses.asdict(settings.model),
            "train": {k: v for k, v in dataclasses.asdict(config).items() if k != "device"},
            "sequences": dataclasses.asdict(settings.sequences),
            "data": hashlib.sha256(rows).hexdigest(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()


def _unfinished_run(client: MlflowClient, fingerprint: str) -> str | None:
    """The newest run of this fingerprint that did not finish (killed or failed), to continue it."""
    runs = client.search_runs(
        [experiment_id(client)],
        f"tags.{FINGERPRINT_TAG} = '{fingerprint}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _summary(
    client: MlflowClient, name: str, version: str, *, reused: bool, run_id: str | None = None
) -> TrainSummary:
    """The summary of a registered version, read back from its run."""
    found = client.get_model_version(name, version)
    run = client.get_run(run_id or found.run_id)
    params, metrics = run.data.params, run.data.metrics
    return TrainSummary(
        model_name=name,
        version=version,
        run_id=run.info.run_id,
        window=(dt.date.fromisoformat(params["window_start"]), dt.date.fromisoformat(params["window_end"])),
        validation=(dt.date.fromisoformat(params["val_start"]), dt.date.fromisoformat(params["val_end"])),
        train_sessions=int(params["train_sessions"]),
        val_sessions=int(params["val_sessions"]),
        val_auc=metrics.get("val_auc", math.nan),
        gbm_val_auc=metrics.get("gbm_val_auc", math.nan),
        best_epoch=int(metrics.get("best_epoch", 0)),
        reused=reused,
    )


def _signature() -> ModelSignature:
    """The model's input is a SEQUENCES frame (scored via models.scorer), its output one score per session."""

    def mlflow_type(dtype: object) -> object:
        if hasattr(dtype, "inner"):
            return Array(mlflow_type(dtype.inner))
        name = type(dtype).__name__
        return {
            "String": "string",
            "Categorical": "string",
            "Boolean": "boolean",
            "Float32": "float",
            "Float64": "double",
        }.get(name, "datetime" if name == "Datetime" else "integer")

    return ModelSignature(
        inputs=Schema([ColSpec(mlflow_type(dtype), name) for name, dtype in SEQUENCES.items()]),
        outputs=Schema([ColSpec("float", "score")]),
    )


def _requirements() -> list[str]:
    """Pinned runtime requirements of the logged model (no slow inference of them by MLflow)."""
    return [
        f"{package}=={importlib.metadata.version(package).split('+')[0]}"
        for package in ("torch", "polars", "pyarrow", "numpy", "mlflow")
    ]


def code_version() -> str:
    """The git commit of the code (suffixed -dirty with uncommitted changes), else the package version."""
    repo = Path(__file__).parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if sha:
        return f"{sha}-dirty" if dirty else sha
    try:
        return f"clickstream {importlib.metadata.version('clickstream')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _code_package(folder: Path) -> Path:
    """A copy of the project's code laid out as its installed namespace (`clickstream/pipeline`, ...),
    so the shipped model imports `clickstream.models...` and never a top-level `models`."""
    repo = Path(__file__).resolve().parents[1]
    package = folder / "clickstream"
    for name in PACKAGES:
        shutil.copytree(repo / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package
