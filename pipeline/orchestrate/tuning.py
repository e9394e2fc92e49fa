"""The weekly tuning job's step as a plain function: dags/clickstream_tune.py only wires it.

`tune_latest` searches model and training settings (models.training.tuning) on the training window that
ends at the newest day of sequences/ and writes the best to `<lake>/_config/training.json`,
where the nightly `train` task picks them up. The DAG passes its run's time as `as_of`: the window ends
at the newest day the table held then, so a retry of the task searches the same window and resumes its
study, even after a nightly run added a day meanwhile. Schedule, trial budget and resources live in
`TUNE` (a `TuneConfig`); the task runs in the nightly jobs' GPU pool and queue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.orchestrate.nightly import NIGHTLY, trainable_window

if TYPE_CHECKING:
    from clickstream.pipeline.core.lake import Lake


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
    settings: Settings,
    *,
    trials: int,
    timeout_s: float | None,
    window_days: int,
    device: str = "auto",
    as_of: dt.datetime | None = None,
) -> dict[str, Any]:
    """Tune on the window ending at the newest sequences day (as of `as_of`); NoDataError (skip) while too short."""
    from clickstream.models.training.tuning import tune

    start, end = latest_window(settings, window_days, as_of)
    summary = tune(settings, start, end, trials=trials, timeout=timeout_s, device=device)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "trials": summary.trials,
        "resumed": summary.resumed,
        "best_val_auc": summary.best_val_auc,
        "default_val_auc": summary.default_val_auc,
        "path": summary.path,
    }


def latest_window(settings: Settings, window_days: int, as_of: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """The tuning window of `window_days` ending at the newest day of sequences/ as the table was at
    `as_of` (default: now); NoDataError (skip) when it held none, or too few days."""
    from clickstream.pipeline.core.lake import Lake

    days = _days_as_of(Lake(settings.lake, settings.buckets), as_of)
    if not days:
        when = "" if as_of is None else f" at {as_of.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC, when the run began"
        raise NoDataError(f"sequences/ is empty{when}: tuning skipped")
    return trainable_window(settings, days[-1], window_days, "tuning")


def _days_as_of(lake: Lake, as_of: dt.datetime | None) -> list[dt.date]:
    """The days of sequences/ as the table was at `as_of` (default: now); none before its first commit."""
    if lake.version("sequences") is None:
        return []
    if as_of is None:
        return lake.dates("sequences")
    versions = [commit.version for commit in lake.history("sequences") if commit.timestamp <= as_of]
    return lake.dates("sequences", versions[0]) if versions else []
