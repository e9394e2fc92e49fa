"""`clickstream train`: one training window in, one registered challenger out.

train_challenger takes the window's labelled sessions split by time (models.training.window:
the last `validation_days` days validate), builds the vocabulary from the training days only,
fits the LSTM, calibrates its scores on the validation days (models.calibration, the method
chosen by held-out calibration error), fits the LightGBM baseline on the same split, logs
everything to one MLflow run (params, per-epoch and system metrics, the training and
validation datasets, plots) and registers the model, an MLflow pyfunc (registry.packaging), as
a new version of `clickstream-buy-intent` with alias `challenger`; the validation metrics
are linked to that logged model. A failed guard (empty window, one class, too few buyers,
NaN loss) ends the run FAILED with the reason and leaves the aliases alone.

Re-running: every version carries a fingerprint of its window, the window's data and
the settings. Re-running a window whose data and settings are unchanged re-uses that
version (alias `challenger` goes back to it) instead of training a duplicate; a changed
day in the window trains a new version. Two processes training the same window at once never
both train it: a claim on the experiment (store.training_claim) lets one start its run, and the
other waits for that run to end, then re-uses its version. A run of the same fingerprint left
RUNNING by a killed process is marked KILLED when the window is trained again; `resume=True` instead
continues the window's interrupted run (same MLflow run, last checkpoint). Checkpoints live in
`settings.checkpoints`, storage every worker sees, so a retry on another machine resumes too.
`gpus` > 1 trains data-parallel on that many local processes, and `nodes` on several machines
(models.training.distributed), each rank reading its own shard of the pinned snapshot; the
launching process of node 0 evaluates and registers, once. No step holds the window: its
survey, counts and validation pass read a shard unit at a time, and the GBM bar trains on a
stable sample of at most BASELINE_SESSIONS training sessions (models.training.baseline).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import polars as pl
import torch
from mlflow.entities import RunStatus

from clickstream.features.tensor_loader import feature_schema, load_tensors
from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.models.bundle import WEIGHTS_SHA256, ModelBundle
from clickstream.models.calibration import logit
from clickstream.models.evaluation import (
    SCORE_HISTOGRAM,
    choose_calibration,
    evaluate,
    expected_calibration_error,
    score_histogram,
    write_plots,
)
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict
from clickstream.models.registry.champion import actor, gate_challenger
from clickstream.models.registry.decision import Decision
from clickstream.models.registry.packaging import EXAMPLE_SESSIONS, log_model, weights_sha256
from clickstream.models.registry.store import (
    EVENTS_VERSION_TAG,
    FEATURE_SCHEMA_TAG,
    FINGERPRINT_TAG,
    SEQUENCES_VERSION_TAG,
    VAL_END_TAG,
    VAL_START_TAG,
    WINDOW_TAG,
    experiment_id,
    model_version,
    register,
    set_challenger,
    tracking_client,
    training_claim,
    version_with_fingerprint,
)
from clickstream.models.training.baseline import Baseline, baseline_sample, fit_baseline
from clickstream.models.training.checkpoints import CheckpointStore
from clickstream.models.training.distributed import check_ranks, fit_ranks, release_nodes
from clickstream.models.training.job import Job, count_window, weights_digest
from clickstream.models.training.nodes import Nodes
from clickstream.models.training.shards import read_units
from clickstream.models.training.tuned import with_tuned
from clickstream.models.training.window import TrainingWindow, check_trainable, datasets, prepare
from clickstream.pipeline.core.code import code_version
from clickstream.pipeline.core.config import CHALLENGER, Settings, TrainConfig
from clickstream.pipeline.core.errors import ClickstreamError, TrainingError
from clickstream.pipeline.core.processes import STALE_AGE, is_stale, owner
from clickstream.pipeline.core.schemas import EVENT_TYPES

if TYPE_CHECKING:
    from mlflow import ActiveRun, MlflowClient
    from mlflow.entities import Run

    from clickstream.features.vocabulary import Vocabulary
    from clickstream.models.training.fit import EpochStats

WEIGHTS_DIGEST_TAG = "weights_digest"  # models.training.job.weights_digest of the trained weights, as every rank ended
OWNER_TAG = "owner"  # host:pid of the process training a run, to tell a killed run from a live one
HEARTBEAT_TAG = "heartbeat"  # when the training process last marked its run alive (ISO time, UTC)
HEARTBEAT = dt.timedelta(minutes=1)  # how often it does
HEARTBEAT_EXPIRY = dt.timedelta(minutes=10)  # a run of another host not marked alive for this long is abandoned
TRAINING_POLL_S = 5.0  # between looks at another process's run of the same window, while waiting for it
_log = logging.getLogger(__name__)


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
    resume: bool | str = False,
    gpus: int = 1,
    nodes: Nodes = Nodes(),
    as_of: int | None = None,
) -> TrainSummary:
    """train_challenger, then with `promote` the champion gate on the challenger's validation days."""
    summary = train_challenger(
        settings, start, end, epochs=epochs, device=device, resume=resume, gpus=gpus, nodes=nodes, as_of=as_of
    )
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
    resume: bool | str = False,
    gpus: int = 1,
    nodes: Nodes = Nodes(),
    as_of: int | None = None,
) -> TrainSummary:
    """Train on the labelled sessions starting in [start, end] (default: all of sequences) at
    `sequences` table version `as_of` (default: the latest), register the model with alias
    `challenger` and return the summary.

    Idempotent per (window, data, settings): an existing version with the same fingerprint
    is re-used. Raises TrainingError (run marked FAILED, aliases untouched) when the window
    cannot yield a trustworthy model. Runs of the same fingerprint left RUNNING by a process
    that is gone (killed) are marked KILLED; `resume` continues the newest unfinished one, from its
    checkpoint: a checkpoint that cannot be continued is a TrainingError, unless `resume` is
    models.training.fit.RESUME_OR_RESTART (`--resume-or-restart`), which starts the window clean instead.
    Tuned settings in the lake (models.training.tuned) apply on top of `settings` when they were tuned for
    the same features. With `nodes` of several machines this is node 0 (the leader): the other
    nodes' `join_ranks` train with it, and are released when there is nothing to train.
    """
    settings = with_tuned(settings)
    nodes.check()
    if gpus != 1:
        check_ranks(gpus, device)
    config = dataclasses.replace(settings.train, epochs=epochs or settings.train.epochs, device=device)
    window = prepare(settings, config, start, end, as_of)
    client = tracking_client(settings)
    try:
        started = _start_run(settings, client, window, resume, device)
    except ClickstreamError as error:
        release_nodes(Job.stopped(window, config, str(error)), ranks=gpus, nodes=nodes)
        raise
    if isinstance(started, str):  # the window's version, registered by this or another process
        release_nodes(Job.stopped(window, config, f"v{started} already holds this window"), ranks=gpus, nodes=nodes)
        set_challenger(settings, started)
        return _summary(settings, client, started, reused=True)

    active, resume = started
    with active as run, _heartbeat(client, run.info.run_id):
        try:
            version = _train_in_run(settings, config, window, resume, gpus, nodes)
        except TrainingError as error:
            mlflow.set_tag("failure_reason", str(error))
            raise  # leaving the `with` marks the run FAILED
    return _summary(settings, client, version, reused=False, run_id=run.info.run_id)


def _train_in_run(
    settings: Settings, config: TrainConfig, window: TrainingWindow, resume: bool | str, gpus: int, nodes: Nodes
) -> str:
    """Fit, evaluate, calibrate, log and register inside the active MLflow run; returns the new version."""
    mlflow.log_params(
        {
            **_params(settings, config, window),
            "gpus": gpus,
            "nodes": nodes.count,
            "sequences_version": window.sequences_version,
            "events_version": window.events_version,
        }
    )
    try:
        check_trainable(window, config)
    except TrainingError as error:
        release_nodes(Job.stopped(window, config, str(error)), ranks=gpus, nodes=nodes)
        raise
    inputs = datasets(settings, window)
    for context, dataset in inputs.items():
        mlflow.log_input(dataset, context=context)

    vocabulary = count_window(window, settings.sequences)
    mlflow.log_params(
        {
            "vocabulary_version": vocabulary.version,
            "n_items": vocabulary.n_items,
            "n_categories": vocabulary.n_categories,
            "train_events": window.train.events,
        }
    )
    torch.manual_seed(config.seed)
    sizes = (vocabulary.n_items, vocabulary.n_categories, len(EVENT_TYPES) + 1, len(CONTINUOUS_FEATURES))
    model = BuyIntentLSTM(settings.model, *sizes)
    checkpoints = CheckpointStore(f"{settings.checkpoints}/{window.fingerprint[:16]}")
    job = Job(
        window,
        vocabulary,
        settings.model,
        sizes,
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        config,
        checkpoint_dir=checkpoints.folder,
        resume=resume,
    )
    result = fit_ranks(job, ranks=gpus, nodes=nodes, on_epoch=_log_epoch)

    baseline = fit_baseline(*baseline_sample(window), seed=config.seed)
    scored = validation_pass(window, vocabulary, result.model, baseline, result.device)
    if not np.isfinite(scored.raw).all():
        raise TrainingError("the trained model gives non-finite scores on the validation sessions")
    choice = choose_calibration(scored.labels, scored.raw)
    bundle = ModelBundle(result.model.cpu().eval(), vocabulary, choice.calibration, settings.sequences)
    lstm_scores = choice.calibration.probability(torch.from_numpy(logit(scored.raw))).numpy()  # as registered
    mlflow.log_params({"calibration": choice.calibration.method, "baseline_sessions": baseline.sessions})
    mlflow.set_tags({"trained_on": result.device, WEIGHTS_DIGEST_TAG: weights_digest(result.model)})

    with tempfile.TemporaryDirectory(prefix="clickstream-run-") as tmp:
        plots = Path(tmp) / "plots"
        curves = {"LSTM": lstm_scores, "LSTM uncalibrated": scored.raw, "GBM": scored.gbm}
        write_plots(scored.labels, curves, plots)
        mlflow.log_artifacts(str(plots), "plots")
        mlflow.log_dict(score_histogram(scored.labels, lstm_scores), f"plots/{SCORE_HISTOGRAM}")
        vocabulary.save(Path(tmp) / "vocabulary")
        mlflow.log_artifacts(str(Path(tmp) / "vocabulary"), "vocabulary")
    logged = log_model(bundle, scored.example)
    # linked to the logged model and the validation dataset (MLflow 3 model metrics), and on the run
    labels, lengths = scored.labels, scored.lengths
    mlflow.log_metrics(
        {
            **evaluate(labels, lstm_scores, lengths).metrics("val_"),
            **evaluate(labels, scored.gbm, lengths).metrics("gbm_val_"),
            "val_ece_raw": expected_calibration_error(labels, scored.raw),
            "val_ece": choice.ece,
            **{f"val_ece_heldout_{method}": ece for method, ece in choice.heldout_ece.items()},
            "calibration_slope": choice.calibration.slope,
            "calibration_intercept": choice.calibration.intercept,
            "calibration_slope_rest": choice.calibration.slope_rest,
            "val_mean_score": float(lstm_scores.mean()),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
        },
        model_id=logged.model_id,
        dataset=inputs["validation"],
    )
    version = register(
        logged.model_uri,
        settings.model_name,
        tags={
            FINGERPRINT_TAG: window.fingerprint,
            VAL_START_TAG: window.validation[0].isoformat(),
            VAL_END_TAG: window.validation[1].isoformat(),
            WINDOW_TAG: f"{window.window[0]}..{window.window[1]}",
            FEATURE_SCHEMA_TAG: feature_schema(),
            SEQUENCES_VERSION_TAG: str(window.sequences_version),
            EVENTS_VERSION_TAG: window.events_version,
            WEIGHTS_SHA256: weights_sha256(logged),  # verified at every load (models.bundle)
        },
    )
    set_challenger(settings, version)
    checkpoints.clear()  # the registered version supersedes them
    return version


@dataclass(frozen=True)
class ValidationScores:
    """The validation sessions' labels, lengths, raw LSTM and GBM scores (in unit order), and a few
    of them as the logged model's input example."""

    labels: np.ndarray
    lengths: np.ndarray
    raw: np.ndarray
    gbm: np.ndarray
    example: pl.DataFrame


def validation_pass(
    window: TrainingWindow, vocabulary: Vocabulary, model: BuyIntentLSTM, baseline: Baseline, device: str
) -> ValidationScores:
    """Score the window's validation sessions with the model and the baseline, a unit at a time; the
    scores come back in (session_start, session_id) order, however the sessions are bucketed, so
    that what is fitted on them (the calibration's interleaved halves) is the same for any bucketing."""
    parts: dict[str, list[np.ndarray]] = {"labels": [], "lengths": [], "raw": [], "gbm": []}
    keys, example = [], None
    for frame in read_units(window.open(), window.val.units):
        example = frame.head(EXAMPLE_SESSIONS) if example is None else example
        keys.append(frame.select("session_start", "session_id"))
        parts["labels"].append(frame.get_column("label").cast(pl.Float32).to_numpy())
        parts["lengths"].append(frame.get_column("n_events").to_numpy())
        parts["raw"].append(predict(model, load_tensors(frame, vocabulary), device=device))
        parts["gbm"].append(baseline.predict(frame))
    order = pl.concat(keys).select(pl.arg_sort_by("session_start", "session_id")).to_series().to_numpy()
    joined = {name: np.concatenate(arrays)[order] for name, arrays in parts.items()}
    return ValidationScores(**joined, example=example)


def _log_epoch(stats: EpochStats) -> None:
    """An epoch's metrics in the run, and a line in the log: a training shows how it goes where no
    terminal draws its bar (a task log, CI)."""
    _log.info(
        "train: epoch %d: loss %.4f, val AUC %.4f, val log loss %.4f, %s sessions/s, %.0f s",
        stats.epoch,
        stats.train_loss,
        stats.val_auc,
        stats.val_logloss,
        f"{stats.sessions_per_s:,.0f}",
        stats.seconds,
    )
    mlflow.log_metrics(
        {
            f"epoch_{name}": float(getattr(stats, name))
            for name in ("train_loss", "val_auc", "val_logloss", "seconds", "sessions_per_s")
        },
        step=stats.epoch,
    )


def _params(settings: Settings, config: TrainConfig, window: TrainingWindow) -> dict[str, object]:
    """Run parameters: the data window and split, and every model, training and sequence setting."""
    return {
        "window_start": window.window[0],
        "window_end": window.window[1],
        "train_start": window.train.first_start,
        "train_end": window.train.last_start,
        "val_start": window.validation[0],
        "val_end": window.validation[1],
        "train_sessions": window.train.sessions,
        "val_sessions": window.val.sessions,
        "train_buyers": window.train.buyers,
        "val_buyers": window.val.buyers,
        "code_version": code_version(),
        **{f"model_{k}": v for k, v in dataclasses.asdict(settings.model).items()},
        **{f"train_{k}": v for k, v in dataclasses.asdict(config).items() if k != "device"},
        **{f"sequences_{k}": v for k, v in dataclasses.asdict(settings.sequences).items()},
    }


def _start_run(
    settings: Settings, client: MlflowClient, data: TrainingWindow, resume: bool | str, device: str
) -> str | tuple[ActiveRun, bool | str]:
    """The registered version of this window's fingerprint (a str) when there is one, else this
    process's run of it, started, and the `resume` to train it with (_end_abandoned_runs). Under a
    claim on the experiment (store.training_claim), so that two processes never both start the
    window: while another live process trains it, wait for that run to end (TRAINING_POLL_S between
    looks), then re-use its version or, when it failed, train."""
    waited_for = None
    while True:
        with training_claim(settings, client):
            existing = version_with_fingerprint(settings, data.fingerprint)
            if existing is not None:
                return str(existing.version)
            live = _live_runs(client, data.fingerprint)
            if not live:
                resumed, resume = _end_abandoned_runs(client, data.fingerprint, resume)
                run = mlflow.start_run(
                    run_id=resumed,
                    experiment_id=experiment_id(client),
                    run_name=f"train {data.span}",
                    tags={
                        FINGERPRINT_TAG: data.fingerprint,
                        OWNER_TAG: owner(),
                        HEARTBEAT_TAG: dt.datetime.now(dt.UTC).isoformat(),
                        "device": device,
                    },
                    log_system_metrics=True,
                )
                return run, resume
        other = live[0]
        if other.info.run_id != waited_for:
            waited_for = other.info.run_id
            holder = other.data.tags.get(OWNER_TAG, "?")
            _log.warning(
                "waiting for run %s (process %s), which trains the same window, data and settings, to end",
                waited_for,
                holder,
            )
        while _is_live(client.get_run(waited_for)):
            time.sleep(TRAINING_POLL_S)


def _live_runs(client: MlflowClient, fingerprint: str) -> list[Run]:
    """This fingerprint's runs that another process, still alive, is training (oldest first)."""
    runs = client.search_runs(
        [experiment_id(client)],
        f"tags.{FINGERPRINT_TAG} = '{fingerprint}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time ASC"],
    )
    return [run for run in runs if _is_live(run)]


def _is_live(run: Run) -> bool:
    """A RUNNING run whose process, another than this one, still trains it. A run of this very
    process is not waited for: it is one an interrupted call here left behind."""
    return run.info.status == "RUNNING" and not _abandoned(run) and run.data.tags.get(OWNER_TAG) != owner()


def _end_abandoned_runs(
    client: MlflowClient, fingerprint: str, resume: bool | str
) -> tuple[str | None, bool | str]:
    """Mark this fingerprint's runs left RUNNING by a process that is gone as KILLED, then return the
    run to continue and the `resume` to train with: with `resume`, the newest run that did not finish
    (killed or failed), else None. A run that other code trained (a deploy between an attempt and its
    retry) is not continued, nor is its checkpoint: a run's parameters name the code of all of it, so
    the window trains afresh in a new run (a warning says so) and `resume` comes back False.
    A run whose process still trains (on this host; on another, for STALE_AGE) is left alone."""
    runs = client.search_runs(
        [experiment_id(client)],
        f"tags.{FINGERPRINT_TAG} = '{fingerprint}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    dead = [run for run in runs if run.info.status != "RUNNING" or _abandoned(run)]
    resumed = dead[0].info.run_id if resume and dead else None
    if resumed is not None and dead[0].data.params.get("code_version", code_version()) != code_version():
        _log.warning(
            "run %s was trained by code %s, this is %s: training the window afresh in a new run",
            resumed,
            dead[0].data.params["code_version"],
            code_version(),
        )
        resumed, resume = None, False
    for run in dead:
        if run.info.status == "RUNNING" and run.info.run_id != resumed:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            client.set_tag(run.info.run_id, "failure_reason", "its process ended without finishing the run")
    return resumed, resume


def _abandoned(run: Run) -> bool:
    """Whether a RUNNING run's process is gone: on this host, its owner tag's process is (processes.is_stale);
    on another, its heartbeat is older than HEARTBEAT_EXPIRY; a run without either (killed before tagging,
    or trained by an earlier clickstream) counts once it is older than STALE_AGE."""
    now = dt.datetime.now(dt.UTC)
    age = now - dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
    holder, beat = run.data.tags.get(OWNER_TAG), run.data.tags.get(HEARTBEAT_TAG)
    if holder and holder.rpartition(":")[0] == socket.gethostname():
        return is_stale(holder, age)
    if beat:
        with contextlib.suppress(TypeError, ValueError):  # not a time: as if there were none
            return now - dt.datetime.fromisoformat(beat) >= HEARTBEAT_EXPIRY
    return is_stale(holder, age) if holder else age >= STALE_AGE


@contextlib.contextmanager
def _heartbeat(client: MlflowClient, run_id: str) -> Iterator[None]:
    """While open, a thread marks the run alive (tag `heartbeat`, the time) every HEARTBEAT, so that a
    process on another host can tell a live training of the window from one whose process died."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a store that does not answer for a while stops nothing
                client.set_tag(run_id, HEARTBEAT_TAG, dt.datetime.now(dt.UTC).isoformat())
            if stop.wait(HEARTBEAT.total_seconds()):
                return

    thread = threading.Thread(target=beat, name=f"clickstream-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _summary(
    settings: Settings, client: MlflowClient, version: str, *, reused: bool, run_id: str | None = None
) -> TrainSummary:
    """The summary of a registered version, read back from its run."""
    found = model_version(settings, version)
    run = client.get_run(run_id or found.run_id)
    params, metrics = run.data.params, run.data.metrics
    return TrainSummary(
        model_name=settings.model_name,
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
