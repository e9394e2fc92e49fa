"""The weekly tuning job's step as a plain function: dags/clickstream_tune.py only wires it.

`tune_latest` searches model and training settings (models.training.tuning) on the training window that
ends at the newest day of sequences/ and writes the best to `<lake>/_config/training.json`,
where the nightly `train` task picks them up. Schedule, trial budget and resources live in
`TUNE` (a `TuneConfig`); the task runs in the nightly jobs' GPU pool and queue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.orchestrate.nightly import NIGHTLY, trainable_window


@dataclass(frozen=True)
class TuneConfig:
    """When and how long clickstream_tune searches."""

    schedule: str | None = None  # manual trigger; "@weekly" searches every Sunday at midnight UTC
    trials: int = 30  # DAG param `trials`
    timeout_s: int = 3 * 3600  # no trial starts after this (DAG param `timeout_s`)
    window_days: int = NIGHTLY.window_days  # the window the nightly training uses (DAG param `window_days`)
    task_timeout: dt.timedelta = dt.timedelta(hours=5)  # the search plus its last trial


TUNE = TuneConfig()


def tune_latest(
    settings: Settings, *, trials: int, timeout_s: float | None, window_days: int, device: str = "auto"
) -> dict[str, Any]:
    """Tune on the window ending at the newest sequences day; NoDataError (skip) while too short."""
    from clickstream.models.training.tuning import tune
    from clickstream.pipeline.core.lake import Lake

    days = Lake(settings.lake, settings.buckets).dates("sequences")
    if not days:
        raise NoDataError("sequences/ is empty: tuning skipped")
    start, end = trainable_window(settings, days[-1], window_days, "tuning")
    summary = tune(settings, start, end, trials=trials, timeout=timeout_s, device=device)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "trials": summary.trials,
        "best_val_auc": summary.best_val_auc,
        "default_val_auc": summary.default_val_auc,
        "path": summary.path,
    }
