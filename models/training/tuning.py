"""`clickstream tune`: search model and training settings on a training window's validation days.

The window is split exactly as `train` splits it (the last `validation_days` days validate);
the vocabulary and tensors are built once and every trial fits a fresh model on them with
`models.training.fit`. The objective is the best validation AUC over a trial's epochs; a trial whose
per-epoch validation AUC falls below the median of earlier trials at the same epoch is pruned
(Optuna's MedianPruner, once 2 trials have completed, from a trial's third epoch on: the first
epochs' AUCs are too noisy to judge a setting by). The first trial always runs the current
settings, so the result is never worse than them on these days. The next trials are the current
settings' neighbours, one parameter moved one step each (`neighbours`), in the space's order:
a short search on a slow machine then tries the small moves most likely to help before Optuna's
sampler (TPE) explores the rest of the space.
Trials run until the study holds `trials` finished ones or `timeout` seconds of this start have
passed (checked between trials).

The study persists (`study_storage`): Optuna's own tables beside an SQL tracking store, else a journal
file, under a name derived from the lake, the window, the space and the fixed settings (`study_name`).
Starting the same search again resumes it: `trials` counts the trials already finished, so a retried
task runs only the rest, and a run whose budget is spent trains nothing. A trial left RUNNING by a
process that died is failed, does not count, and runs again. One search of a window at a time: a
second one started meanwhile would take the first's running trial for an abandoned one.

Every trial is a nested MLflow run (its settings as params, per-epoch `epoch_val_auc`, its
state as a tag) under the parent run "tune <window>" of the start that ran it; the last start's parent
holds the best settings of the whole study. Each finished trial prints one line on stderr. The best
settings are written to `<lake>/_config/training.json` (models.training.tuned) with the feature
signature they were tuned for; `train` and the nightly DAG apply them from then on.

Search space (SEARCH_SPACE; `choice` values, `float` uniform bounds, `log` log-uniform bounds):
    model.dropout        float   0.0 .. 0.4        (neighbours: +-0.1)
    train.weight_decay   log     1e-6 .. 1e-3      (neighbours: x3, /3)
    train.learning_rate  log     1e-3 .. 1e-2      (neighbours: x3, /3)
    model.hidden_size    choice  32, 64, 96, 128   (neighbours: the next value up, then down)
    model.head_hidden    choice  0, 32, 64         (0: a linear head)
    model.category_dim   choice  8, 16, 32
    model.item_dim       choice  0, 8, 16          (0: no learned item embedding)
    model.max_pool       choice  true, false
    model.last_event     choice  true, false
    model.head_linear    choice  true, false
Epochs, patience, seed and validation days stay as configured; batch size is left out because
training sets below about 2M sessions use smaller batches anyway (models.training.fit.epoch_batch_size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import sqlalchemy
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.models.device import resolve_device
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.registry.store import experiment_id, tracking_client
from clickstream.models.training.fit import EpochStats, fit
from clickstream.models.training.inputs import TrainingInput
from clickstream.models.training.job import count_window, rank_inputs
from clickstream.models.training.tuned import TunedSettings, feature_signature, write_tuned
from clickstream.models.training.window import check_trainable, prepare
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import TrackingStoreError, TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import EVENT_TYPES
from clickstream.pipeline.core.tracking import local_store_path, redacted, scrubbed, store_creation_lock

# "group.field": (kind, values): kind "choice" (values to pick from), "float" or "log" (low, high)
SEARCH_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "model.dropout": ("float", (0.0, 0.4)),
    "train.weight_decay": ("log", (1e-6, 1e-3)),
    "train.learning_rate": ("log", (1e-3, 1e-2)),
    "model.hidden_size": ("choice", (32, 64, 96, 128)),
    "model.head_hidden": ("choice", (0, 32, 64)),
    "model.category_dim": ("choice", (8, 16, 32)),
    "model.item_dim": ("choice", (0, 8, 16)),
    "model.max_pool": ("choice", (True, False)),
    "model.last_event": ("choice", (True, False)),
    "model.head_linear": ("choice", (True, False)),
}
FLOAT_STEP = 0.1  # a "float" parameter's neighbours: +- this
LOG_FACTOR = 3.0  # a "log" parameter's neighbours: x and / this
TUNE_TAG = "clickstream.tune"  # on the parent run: the window searched
STUDY_TAG = "clickstream.tune.study"  # on the parent run: the Optuna study it worked on
STUDY_DB = "optuna.db"  # Optuna's SQLite database, beside an SQLite tracking store
STUDY_SCHEMA = "optuna"  # Optuna's schema in a PostgreSQL tracking database (MySQL: database <name>_optuna)
STUDY_JOURNAL = "tune-studies.log"  # the journal file where the tracking store is no SQL database
RUN_ATTR = "mlflow_run_id"  # user attribute of a trial (its nested run) and of the study (the last parent run)
INTERRUPTED_ATTR = "interrupted"  # study user attribute: numbers of the trials a dying process left running
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class TuneSummary:
    """What a search found; str() is the CLI's one-line summary."""

    trials: int
    resumed: int  # of `trials`, those finished by earlier starts of the same study
    pruned: int
    failed: int
    default_val_auc: float
    best_val_auc: float
    best: dict[str, Any]
    path: str
    run_id: str
    study: str

    def __str__(self) -> str:
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best.items())
        return (
            f"tuned {self.trials} trials ({self.resumed} resumed, {self.pruned} pruned, {self.failed} failed): val AUC "
            f"{self.best_val_auc:.4f} vs {self.default_val_auc:.4f} with the current settings; "
            f"best {chosen or 'the current settings'}; written to {self.path}"
        )


def tune(
    settings: Settings,
    start: dt.date | None,
    end: dt.date | None,
    *,
    trials: int = 20,
    timeout: float | None = None,
    epochs: int | None = None,
    device: str = "auto",
    space: dict[str, tuple[str, tuple[Any, ...]]] | None = None,
) -> TuneSummary:
    """Search `space` (default SEARCH_SPACE) on the labelled sessions starting in [start, end]
    and write the best settings to the lake. The study resumes where an earlier start of the same
    search stopped; `trials` counts its finished trials. Raises TrainingError when the window cannot
    train and judge a model, or when every trial failed; TrackingStoreError when the study's
    storage cannot be opened."""
    space = SEARCH_SPACE if space is None else space
    config = dataclasses.replace(settings.train, epochs=epochs or settings.train.epochs, device=device)
    split = prepare(settings, config, start, end)
    check_trainable(split, config)
    vocabulary = count_window(split, settings.sequences)
    train, val = rank_inputs(split, vocabulary, config, device=resolve_device(device))
    sizes = (vocabulary.n_items, vocabulary.n_categories, len(EVENT_TYPES) + 1, len(CONTINUOUS_FEATURES))
    base = dataclasses.replace(settings, train=config)

    name = study_name(base, split.span, space)
    study, where = _open_study(settings, name, config.seed)
    client = tracking_client(settings)
    current = _current(base, space)
    before = _queue(study, client, current, space)
    _say(f"tune: study '{name}' in {where}: {before} of {trials} trials finished before")
    with mlflow.start_run(experiment_id=experiment_id(client), run_name=f"tune {split.span}") as parent:
        study.set_user_attr(RUN_ATTR, parent.info.run_id)
        mlflow.set_tags({TUNE_TAG: split.span, STUDY_TAG: name, "device": device})
        mlflow.log_params({"trials": trials, "timeout_s": timeout, "search_space": repr(space), "resumed": before})
        if before < trials:
            study.optimize(
                lambda trial: _trial(trial, base, space, train, val, sizes),
                n_trials=trials - before,
                timeout=timeout,
                catch=(TrainingError,),
                callbacks=[_progress(trials)],
            )
        ran = finished_trials(study)
        if not any(t.state == TrialState.COMPLETE for t in ran):
            raise TrainingError(f"every tuning trial on {split.span} failed or was pruned; see the MLflow runs")
        best = study.best_trial
        default_auc = _current_value(ran, current)
        tuned = _settings_of(base, best.params)
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({"best_val_auc": best.value, "default_val_auc": default_auc})
        path = write_tuned(
            settings,
            TunedSettings(
                signature=feature_signature(settings),
                model=dataclasses.asdict(tuned.model),
                train={"learning_rate": tuned.train.learning_rate, "weight_decay": tuned.train.weight_decay},
                val_auc=float(best.value),
                default_val_auc=float(default_auc),
                window=(str(split.window[0]), str(split.window[1])),
                trials=len(ran),
                run_id=parent.info.run_id,
            ),
        )
    return TuneSummary(
        trials=len(ran),
        resumed=before,
        pruned=sum(t.state == TrialState.PRUNED for t in ran),
        failed=sum(t.state == TrialState.FAIL for t in ran),
        default_val_auc=default_auc,
        best_val_auc=float(best.value),
        best={k: v for k, v in best.params.items() if v != current.get(k)},
        path=path,
        run_id=parent.info.run_id,
        study=name,
    )


def study_name(settings: Settings, span: str, space: dict[str, tuple[str, tuple[Any, ...]]]) -> str:
    """The study's name, `tune <window> <digest>`: the digest covers the lake, the space, the feature
    signature and every fixed model and training setting that changes a trial's value (not where it
    runs), so the same search resumes its study and any other starts its own."""
    fixed = {"device", "cpu_threads", "memory_mb"}
    key = {
        "lake": settings.lake,
        "window": span,
        "space": space,
        "features": feature_signature(settings),
        "model": dataclasses.asdict(settings.model),
        "train": {k: v for k, v in dataclasses.asdict(settings.train).items() if k not in fixed},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"tune {span} {digest}"


def study_storage(settings: Settings) -> tuple[BaseStorage, str]:
    """Where tune keeps its studies, so that a retried search resumes, and how a message (or
    optuna-dashboard) names it, secrets masked: `settings.tune_storage` (a database URL, or a journal
    file) when set; else Optuna's own tables beside an SQL tracking store (an SQLite file beside it,
    schema `optuna` of a PostgreSQL database, database <name>_optuna on a MySQL server: Optuna and
    MLflow both keep an `alembic_version` table, so they cannot share one schema); else an Optuna
    journal file in the lake's `_config/` (a local lake) or the home. TrackingStoreError names a
    storage that cannot be opened."""
    source = settings.tune_storage or settings.tracking_uri
    origin = "CLICKSTREAM_TUNE_STORAGE" if settings.tune_storage else "beside MLFLOW_TRACKING_URI"
    try:
        target = settings.tune_storage or _beside_tracking(settings.tracking_uri) or _journal_path(settings)
        if "://" in target:
            with store_creation_lock(target):  # Optuna creates its tables without a lock of its own
                return RDBStorage(target), redacted(target)
        path = Path(target).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    except ImportError as error:
        message = f"its database driver {error.name or error} is not installed"
    except (sqlalchemy.exc.SQLAlchemyError, OSError, RuntimeError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        message = scrubbed(lines[0], source)
    raise TrackingStoreError(f"cannot open the tuning study store {redacted(source)} ({origin}): {message}")


def _open_study(settings: Settings, name: str, seed: int) -> tuple[optuna.Study, str]:
    """The study `name`, created or loaded, and where it is kept (as `study_storage` names it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, where = study_storage(settings)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3),
    )
    return study, where


def _queue(
    study: optuna.Study, client: MlflowClient, current: dict[str, Any], space: dict[str, tuple[str, tuple[Any, ...]]]
) -> int:
    """Make the study ready to go on: what a dying process left running settled, the current settings
    and their neighbours queued unless already there; returns the trials already finished."""
    _settle_interrupted(study, client)
    for params in [current, *neighbours(current, space)]:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(finished_trials(study))


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials that count against the budget: complete, pruned or failed, and not left
    running by a process that died."""
    interrupted = set(study.user_attrs.get(INTERRUPTED_ATTR, []))
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number not in interrupted]


def _beside_tracking(uri: str) -> str | None:
    """The URL of Optuna's tables beside the SQL tracking store `uri` (schema or database created if
    missing); None when the store is no SQLite, PostgreSQL or MySQL database."""
    backend = uri.partition("://")[0].partition("+")[0]
    if backend == "sqlite" and (path := local_store_path(uri)) is not None:
        return f"sqlite:///{path.parent / STUDY_DB}"
    if backend not in ("postgresql", "mysql"):
        return None
    url = sqlalchemy.engine.make_url(uri)
    schema = STUDY_SCHEMA if backend == "postgresql" else f"{url.database}_{STUDY_SCHEMA}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {engine.dialect.identifier_preparer.quote(schema)}")
            )
    finally:
        engine.dispose()
    if backend == "postgresql":
        url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    else:
        url = url.set(database=schema)
    return url.render_as_string(hide_password=False)


def _journal_path(settings: Settings) -> str:
    """The journal file: in the lake's `_config/` when the lake is a local folder (every worker of a
    shared disk sees it), else in the home (a journal needs a local file's locks)."""
    if "://" in settings.lake:
        return str(settings.home / STUDY_JOURNAL)
    return Lake(settings.lake, settings.buckets).config_file(STUDY_JOURNAL)


def _settle_interrupted(study: optuna.Study, client: MlflowClient) -> None:
    """Fail the trials an earlier start left RUNNING (its process died), out of the budget, each queued
    to run again; fail their nested MLflow runs and the earlier start's parent run if still running."""
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    runs = [t.user_attrs[RUN_ATTR] for t in left if RUN_ATTR in t.user_attrs]
    runs += [study.user_attrs[RUN_ATTR]] if RUN_ATTR in study.user_attrs else []
    for run_id in runs:
        with contextlib.suppress(MlflowException):  # a run of another tracking store is left alone
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "state", "failed")
                client.set_tag(run_id, "failure_reason", "its process ended; the study resumed")
                client.set_terminated(run_id, "FAILED")
    if not left:
        return
    study.set_user_attr(INTERRUPTED_ATTR, [*study.user_attrs.get(INTERRUPTED_ATTR, []), *(t.number for t in left)])
    for trial in left:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.system_attrs.get("fixed_params", trial.params), user_attrs={"retry_of": trial.number})


def _current_value(trials: list[FrozenTrial], current: dict[str, Any]) -> float:
    """The validation AUC of the current settings: the first complete trial that ran them (NaN if none)."""
    ran = (
        t for t in trials if t.state == TrialState.COMPLETE and all(t.params.get(k) == v for k, v in current.items())
    )
    first = min(ran, key=lambda t: t.number, default=None)
    return math.nan if first is None else float(first.value)


def _progress(trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback printing one line per finished trial: its number, state and value, the best so far."""

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        done = finished_trials(study)
        value = trial.value if trial.value is not None else trial.intermediate_values.get(trial.last_step)
        shown = "" if value is None else f", val AUC {value:.4f}"
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value, default=None)
        leader = "none complete yet" if best is None else f"{best.value:.4f} (trial {best.number})"
        state = trial.state.name.lower() + (
            f" after epoch {trial.last_step}" if trial.state == TrialState.PRUNED else ""
        )
        _say(f"tune: trial {trial.number} {state}{shown}; best {leader}; {len(done)} of {trials}")

    return report


def _say(line: str) -> None:
    """One progress line on stderr, where the CLI and the Airflow task log show it."""
    print(line, file=sys.stderr, flush=True)


def _trial(
    trial: optuna.Trial,
    base: Settings,
    space: dict[str, tuple[str, tuple[Any, ...]]],
    train: TrainingInput,
    val: TrainingInput,
    sizes: tuple[int, int, int, int],
) -> float:
    """Fit one suggested configuration in a nested MLflow run; its best validation AUC."""
    params = {name: _suggest(trial, name, kind, values) for name, (kind, values) in space.items()}
    settings = _settings_of(base, params)
    parent = mlflow.active_run()
    assert parent is not None
    with mlflow.start_run(
        nested=True, experiment_id=parent.info.experiment_id, run_name=f"trial {trial.number}"
    ) as run:
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        mlflow.log_params({**params, "trial": trial.number})

        def report(stats: EpochStats) -> None:
            mlflow.log_metrics({"epoch_val_auc": stats.val_auc, "epoch_train_loss": stats.train_loss}, step=stats.epoch)
            trial.report(stats.val_auc, stats.epoch)
            if trial.should_prune():
                mlflow.set_tag("state", "pruned")
                raise optuna.TrialPruned(f"val AUC {stats.val_auc:.4f} after epoch {stats.epoch}")

        torch.manual_seed(settings.train.seed)
        model = BuyIntentLSTM(settings.model, *sizes)
        try:
            result = fit(train, val, model, settings.train, on_epoch=report)
        except TrainingError as error:
            mlflow.set_tags({"state": "failed", "failure_reason": str(error)})
            raise
        mlflow.set_tag("state", "complete")
        mlflow.log_metrics({"val_auc": result.best_val_auc, "best_epoch": result.best_epoch})
    return result.best_val_auc


def _suggest(trial: optuna.Trial, name: str, kind: str, values: tuple[Any, ...]) -> Any:
    if kind == "choice":
        return trial.suggest_categorical(name, list(values))
    return trial.suggest_float(name, values[0], values[1], log=kind == "log")


def _current(settings: Settings, space: dict[str, tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """The space's parameters at their values in `settings` (those a trial can take)."""
    current = {name: getattr(getattr(settings, name.split(".")[0]), name.split(".")[1]) for name in space}
    return {
        name: value
        for name, value in current.items()
        if (value in space[name][1] if space[name][0] == "choice" else space[name][1][0] <= value <= space[name][1][1])
    }


def neighbours(current: dict[str, Any], space: dict[str, tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """`current` with one parameter moved one step inside `space`, parameter by parameter in the
    space's order: a choice to the next value up then down, a float by +-FLOAT_STEP, a log-uniform
    one by x and / LOG_FACTOR (clipped to its bounds). Parameters missing from `current` are left out."""
    moved = []
    for name, (kind, values) in space.items():
        if name not in current:
            continue
        value = current[name]
        if kind == "choice":
            at = values.index(value)
            steps = [values[i] for i in (at + 1, at - 1) if 0 <= i < len(values)]
        else:
            low, high = values
            linear = kind == "float"
            up, down = (value + FLOAT_STEP, value - FLOAT_STEP) if linear else (value * LOG_FACTOR, value / LOG_FACTOR)
            steps = [min(max(step, low), high) for step in (up, down)]
        moved += [{**current, name: step} for step in dict.fromkeys(steps) if step != value]
    return moved


def _settings_of(settings: Settings, params: dict[str, Any]) -> Settings:
    """`settings` with "group.field" parameters applied."""
    groups: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        group, field = name.split(".")
        groups.setdefault(group, {})[field] = value
    return dataclasses.replace(
        settings, **{group: dataclasses.replace(getattr(settings, group), **fields) for group, fields in groups.items()}
    )
