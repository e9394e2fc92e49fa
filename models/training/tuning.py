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
Trials run until `trials` have run or `timeout` seconds have passed (checked between trials).

Every trial is a nested MLflow run (its settings as params, per-epoch `epoch_val_auc`, its
state as a tag) under one parent run "tune <window>" that holds the best settings. The best
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
Epochs, patience, seed and validation days stay as configured; batch size is left out because
training sets below about 2M sessions use smaller batches anyway (models.training.fit.epoch_batch_size).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
import torch

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
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.schemas import EVENT_TYPES

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
}
FLOAT_STEP = 0.1  # a "float" parameter's neighbours: +- this
LOG_FACTOR = 3.0  # a "log" parameter's neighbours: x and / this
TUNE_TAG = "clickstream.tune"  # on the parent run: the window searched


@dataclass(frozen=True)
class TuneSummary:
    """What a search found; str() is the CLI's one-line summary."""

    trials: int
    pruned: int
    failed: int
    default_val_auc: float
    best_val_auc: float
    best: dict[str, Any]
    path: str
    run_id: str

    def __str__(self) -> str:
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best.items())
        return (
            f"tuned {self.trials} trials ({self.pruned} pruned, {self.failed} failed): val AUC "
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
    and write the best settings to the lake. Raises TrainingError when the window cannot
    train and judge a model, or when every trial failed."""
    space = SEARCH_SPACE if space is None else space
    config = dataclasses.replace(settings.train, epochs=epochs or settings.train.epochs, device=device)
    split = prepare(settings, config, start, end)
    check_trainable(split, config)
    vocabulary = count_window(split, settings.sequences)
    train, val = rank_inputs(split, vocabulary, config, device=resolve_device(device))
    sizes = (vocabulary.n_items, vocabulary.n_categories, len(EVENT_TYPES) + 1, len(CONTINUOUS_FEATURES))
    base = dataclasses.replace(settings, train=config)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3),
    )
    current = _current(base, space)
    for params in [current, *neighbours(current, space)]:
        study.enqueue_trial(params, skip_if_exists=True)
    client = tracking_client(settings)
    with mlflow.start_run(experiment_id=experiment_id(client), run_name=f"tune {split.span}") as parent:
        mlflow.set_tags({TUNE_TAG: split.span, "device": device})
        mlflow.log_params({"trials": trials, "timeout_s": timeout, "search_space": repr(space)})
        study.optimize(
            lambda trial: _trial(trial, base, space, train, val, sizes),
            n_trials=trials,
            timeout=timeout,
            catch=(TrainingError,),
        )
        states = optuna.trial.TrialState
        ran = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL))  # not the queued
        if not any(t.state == states.COMPLETE for t in ran):
            raise TrainingError(f"every tuning trial on {split.span} failed or was pruned; see the MLflow runs")
        best = study.best_trial
        first = study.trials[0]
        default_auc = first.value if first.state == states.COMPLETE else math.nan
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
        pruned=sum(t.state == states.PRUNED for t in ran),
        failed=sum(t.state == states.FAIL for t in ran),
        default_val_auc=default_auc,
        best_val_auc=float(best.value),
        best={k: v for k, v in best.params.items() if v != first.params.get(k)},
        path=path,
        run_id=parent.info.run_id,
    )


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
    with mlflow.start_run(nested=True, experiment_id=parent.info.experiment_id, run_name=f"trial {trial.number}"):
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
