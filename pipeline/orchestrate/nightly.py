"""The nightly job's steps as plain functions: the Airflow DAGs only wire them, tests call them directly.

Every step takes `Settings` and the UTC day it works for, and returns a small dict of plain
values (counts, dates as ISO strings, versions) that travels through XCom. Each step is
idempotent for its day: re-running it replaces the same lake partitions with the same rows and
reuses the model version trained on the same window and data.

"Nothing to do" (no landing files yet, too little history to train) is a `NoDataError`; the DAGs
turn it into an Airflow skip with the error's one-line reason (`skip_when_no_data`), logged in the
task's log. What each task reads and writes is declared as Airflow Assets (`lineage`).

Schedule, window and resources live in ONE place: `NIGHTLY` (a `NightlyConfig`) below.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from clickstream.pipeline.core.config import CHALLENGER, CHAMPION, Settings, train_executor
from clickstream.pipeline.core.errors import ClickstreamError, NoDataError
from clickstream.pipeline.core.progress import quiet_libraries
from clickstream.pipeline.ingest.formats import FORMATS

if TYPE_CHECKING:
    from airflow.sdk import Asset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NightlyConfig:
    """How and when the clickstream DAGs run: the one place to change schedule, window or resources."""

    schedule: str = "@daily"  # any daily cron; a run covers the UTC day its data interval starts on
    window_days: int = 30  # training window, ending at the run's day (DAG param `window_days`)
    epochs: int | None = None  # None: TrainConfig.epochs (DAG param `epochs`)
    device: str = "auto"  # auto | cpu | cuda (DAG param `device`)
    retries: int = 3  # for infrastructure errors; input/data errors (ClickstreamError) never retry
    retry_delay: dt.timedelta = dt.timedelta(minutes=2)  # doubles on each retry...
    max_retry_delay: dt.timedelta = dt.timedelta(minutes=30)  # ...up to this
    task_timeout: dt.timedelta = dt.timedelta(hours=1)  # every task but training
    train_timeout: dt.timedelta = dt.timedelta(hours=4)
    late_after: dt.timedelta = dt.timedelta(hours=6)  # deadline alert: a run still unfinished this long after queueing
    gpu_pool: str = "gpu"  # training runs in this pool and queue
    gpu_queue: str = "gpu"
    gpu_pool_slots: int = 1  # trainings at once (created by `prepare_airflow`)
    gpus_per_training: int = 1  # processes (one per GPU, models.training.distributed); nvidia.com/gpu of the pod
    # machines per training: above 1 the train task submits docker/k8s/train-nodes.yaml (an Indexed Job of
    # `train_nodes` pods meeting at torchrun's c10d rendezvous, pipeline.orchestrate.train_nodes) and waits for it
    train_nodes: int = 1
    train_image: str = "clickstream-gpu-worker:latest"  # the image of the multi-node training's pods
    # The executor the training task asks for, e.g. "KubernetesExecutor" (env CLICKSTREAM_TRAIN_EXECUTOR).
    # It must be one of Airflow's configured executors ([core] executor lists several): DAG parsing
    # rejects a task whose executor is not. None: the default executor.
    train_executor: str | None = None
    # Where the workers' image mounts docker/k8s/pod-template-train.yaml (KubernetesExecutor only)
    train_pod_template: str = "/opt/airflow/pod_templates/pod-template-train.yaml"
    rescore_days: int = 7  # a new champion re-scores the latest this-many sequence days
    # backfill ingests at once: different batches commit to the same dates concurrently (Delta)
    ingest_concurrency: int = 4
    # mapped instances per bucket-wise task (sequences, score) and per landing file (ingest) running
    # at once in one DAG run: each writes only its own partitions, so they commit side by side; the
    # cap keeps one run from taking every worker slot (docs/operations.md, "Scale")
    bucket_concurrency: int = 8
    report_days: int = 7  # the nightly report covers the latest this-many days


@dataclass(frozen=True)
class MaintenanceConfig:
    """When clickstream_maintenance compacts and cleans the lake's tables."""

    schedule: str = "0 3 * * 0"  # Sundays, 03:00 UTC
    retention_hours: int = 7 * 24  # vacuum keeps every file a version of the last week reads


MAINTENANCE = MaintenanceConfig()
NIGHTLY = NightlyConfig(train_executor=train_executor())

# The log record attribute holding a skipped task's reason (`skip`), for what reads task logs back.
SKIP_REASON = "skip_reason"


# ---- lineage: what each task reads and writes, as Airflow Assets ------------------------------------
@dataclass(frozen=True)
class Lineage:
    """The data the DAGs move, as Airflow Assets for the tasks' inlets and outlets (the Assets view shows
    them, and OpenLineage reports them wherever its provider is installed): the landing folder, each
    lake table at its own URI, the registered model's two aliases, and the folder of the nightly reports.
    A task that succeeds emits an event on each of its outlets; clickstream_rescore runs on `champion`."""

    landing: Asset
    events: Asset
    quarantine: Asset
    sequences: Asset
    scores: Asset
    cookie_intent: Asset
    challenger: Asset
    champion: Asset
    reports: Asset


def lineage(settings: Settings) -> Lineage:
    """The Assets of `settings`' landing, lake, model and reports. A table is named by its URI,
    `<lake URI>/<table>` (`file:///srv/lake/events`, `s3://bucket/lake/events`), as are the landing and
    reports folders: a lake moved elsewhere is another Asset, which Airflow activates at once (an Asset's
    name and URI must each be unique among the active ones). A model alias is `clickstream-<alias>` at
    `models:/<model name>@<alias>`, MLflow's URI of that version."""
    from airflow.sdk import Asset

    def located(location: str) -> Asset:
        uri = location_uri(location)
        return Asset(name=uri, uri=uri)

    def model(alias: str) -> Asset:
        return Asset(name=f"clickstream-{alias}", uri=f"models:/{settings.model_name}@{alias}", group="model")

    lake = location_uri(settings.lake)
    return Lineage(
        landing=located(settings.landing),
        events=located(f"{lake}/events"),
        quarantine=located(f"{lake}/quarantine"),
        sequences=located(f"{lake}/sequences"),
        scores=located(f"{lake}/scores"),
        cookie_intent=located(f"{lake}/cookie_intent"),
        challenger=model(CHALLENGER),
        champion=model(CHAMPION),
        reports=located(str(Path(settings.home) / "reports")),
    )


def location_uri(location: str) -> str:
    """A path or URL as an Asset URI: a URL (`s3://bucket/lake`) as it is, a path as an absolute `file://` URI."""
    return location.rstrip("/") if "://" in location else Path(location).absolute().as_uri()


# ---- the day a run covers --------------------------------------------------------------------
def run_day(data_interval_start: dt.datetime) -> dt.date:
    """The UTC day a run works on: the date its data interval starts (never the wall clock)."""
    return data_interval_start.astimezone(dt.UTC).date()


def training_window(day: dt.date, window_days: int) -> tuple[dt.date, dt.date]:
    """The rolling training window: `window_days` days ending at `day`, both ends inclusive."""
    if window_days < 1:
        raise ValueError(f"window_days must be at least 1, got {window_days}")
    return day - dt.timedelta(days=window_days - 1), day


# ---- landing -> events -> sequences ----------------------------------------------------------
def find_landing(settings: Settings, day: dt.date) -> dict[str, Any]:
    """The raw files of `<landing>/YYYY-MM-DD/`, sorted by name, of the first format of the registry
    (`clickstream.pipeline.ingest.formats`) whose landing names match: YOOCHOOSE clicks and buys, or
    cookie event logs named `events*`. Other files there (e.g. the generator's truth.parquet) are ignored.

    Raises NoDataError (the DAG skips the run) when the folder is missing or holds no raw log.
    """
    folder = Path(settings.landing) / day.isoformat()

    def matching(*patterns: str) -> list[str]:
        found = {p for pattern in patterns for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")}
        return sorted(str(p) for p in found)

    for fmt in FORMATS.values():
        files = matching(*fmt.landing) if fmt.landing else []
        if files:
            return {"day": day.isoformat(), "format": fmt.name, "files": files, "buys": matching(*fmt.landing_buys)}
    raise NoDataError(f"no landing files for {day} in {folder}: nothing to ingest, the run is skipped")


def landing_batches(found: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A `find_landing` result as the batches the DAG ingests side by side: one per log file, or one
    for the whole day where buys files complete the clicks (every clicks file needs them)."""
    if found["buys"]:
        return [dict(found)]
    return [{**found, "files": [path]} for path in found["files"]]


def bucket_numbers(settings: Settings) -> list[int]:
    """The lake's buckets, 0 .. n-1: what the bucket-wise tasks are mapped over."""
    from clickstream.pipeline.core.lake import Lake

    return list(range(Lake(settings.lake, settings.buckets).buckets))


def mapped_results(results: Sequence[Any]) -> list[Any]:
    """The results of a mapped task as a list, read by index: iterating Airflow's lazy sequence of
    them asks for one past the end, which its client logs as an error."""
    return [results[index] for index in range(len(results))]


def dropped_dates(ingested: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every date a run's ingests dropped (`ingest_landing`'s `dropped`), once, ascending."""
    return sorted({day for result in mapped_results(ingested) for day in result.get("dropped", ())})


def sessions_scored(scored: Sequence[Mapping[str, Any]]) -> int:
    """The sessions the bucket-wise `score_days` results of a run scored, together."""
    return sum(int(result["sessions"]) for result in mapped_results(scored))


def merge_built(built: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary of the bucket-wise `rebuild_sequences` results of a day: what train, score and
    report go on (dates, sessions and buyers summed over the buckets)."""
    results = mapped_results(built)
    if not results:
        raise NoDataError("no bucket built any sequences: nothing to train or score")
    return {
        "start": min(r["start"] for r in results),
        "end": max(r["end"] for r in results),
        "dates": sorted({d for r in results for d in r["dates"]}),
        "sessions": sum(int(r["sessions"]) for r in results),
        "buyers": sum(int(r["buyers"]) for r in results),
        "buckets": len(results),
    }


def ingest_landing(settings: Settings, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Ingest one day's landing files (a `find_landing` result) into events/; bad rows to quarantine/.

    Idempotent per batch: the same files give the same events/ partitions.
    """
    from clickstream.pipeline.ingest.ingest import ingest_files

    day = dt.date.fromisoformat(batch["day"])
    summary = ingest_files(settings, batch["format"], batch["files"], batch["buys"], ingestion_date=day)
    counts = {name: int(getattr(summary, name)) for name in ("rows_read", "rows_written", "quarantined", "duplicates")}
    # dates a re-delivered batch no longer has: marked for rebuild_sequences
    return {"day": batch["day"], **counts, "dropped": [d.isoformat() for d in summary.dropped]}


def rebuild_sequences(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    dropped: Iterable[str | dt.date] = (),
    bucket: int | None = None,
) -> dict[str, Any]:
    """Rebuild sequences/ for [start - 1 day, end]: the day before too, so a session that crossed
    midnight into `start` is complete in its start day's partition. Then the dates marked for
    rebuild: those a re-delivered batch dropped (`dropped`, from `ingest_landing`) and any date
    whose sequences outlived its events (`features.sequences.stale_dates`, whatever removed them),
    each with the day before and after, so their sequences are cleared and their neighbours'
    rebuilt; then the scores that outlived their sequences are cleared and the rebuilt dates that
    had scores are re-scored (`settle_scores`). All of it for `bucket` alone (a mapped task's), or
    every bucket. Idempotent (each partition is replaced atomically with the same rows)."""
    from clickstream.features.sequences import build_sequences, stale_dates
    from clickstream.pipeline.core.lake import Lake

    summary = build_sequences(settings, start - dt.timedelta(days=1), end, bucket)
    marked = {d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in dropped}
    marked |= set(stale_dates(Lake(settings.lake, settings.buckets)))
    ranges = _runs(sorted({d + dt.timedelta(days=offset) for d in marked for offset in (-1, 0, 1)}))
    for first, last in ranges:
        with contextlib.suppress(NoDataError):  # neither events nor sequences there: nothing to rebuild
            build_sequences(settings, first, last, bucket)
    settled = settle_scores(settings, ranges, bucket)
    return {
        "bucket": bucket,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "dates": [d.isoformat() for d in summary.dates],
        "sessions": summary.sessions,
        "buyers": summary.buyers,
        "rebuilt": [[first.isoformat(), last.isoformat()] for first, last in ranges],
        **settled,
    }


def settle_scores(
    settings: Settings, rebuilt: Iterable[tuple[dt.date, dt.date]], bucket: int | None = None
) -> dict[str, list[str]]:
    """Scores never outlive their sequences: in `bucket` (default: every bucket), clear the scores of
    every date without sequences (one commit per run of such dates, then cookie_intent updated), and
    re-score with the champion the dates of the `rebuilt` ranges that have both (skipped while there
    is no champion). Returns the dates cleared and re-scored, as ISO strings."""
    from clickstream.pipeline.core.lake import Lake, dates_predicate
    from clickstream.pipeline.serve.scoring import refresh_cookie_intent

    lake = Lake(settings.lake, settings.buckets)
    cleared: set[dt.date] = set()
    rescored: set[dt.date] = set()
    for part in range(lake.buckets) if bucket is None else [bucket]:
        have = set(lake.dates("sequences", bucket=part))
        scored = lake.dates("scores", bucket=part)
        gone = [day for day in scored if day not in have]
        for first, last in _runs(gone):  # every date of a run is one of `gone`: no other scores go
            meta = {"reason": "their sequences are gone", "first_date": first, "last_date": last, "bucket": part}
            version = lake.commit(
                "scores", [], replace=dates_predicate(first, last, part), stage="score", metadata=meta
            )
            refresh_cookie_intent(lake, version, [first, last], part)
        cleared |= set(gone)
        for first, last in rebuilt:
            days = [day for day in scored if first <= day <= last and day in have]
            if days:
                with contextlib.suppress(NoDataError):  # no champion yet: nothing scores them
                    done = score_days(settings, days[0], days[-1], part)["dates"]
                    rescored |= {dt.date.fromisoformat(d) for d in done}
    return {
        "scores_cleared": [d.isoformat() for d in sorted(cleared)],
        "rescored": [d.isoformat() for d in sorted(rescored)],
    }


def _runs(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """The runs of consecutive calendar days in `days` (ascending), as (first, last) pairs."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in days:
        if runs and day - runs[-1][1] == dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


# ---- model -----------------------------------------------------------------------------------
def trainable_window(settings: Settings, day: dt.date, window_days: int, what: str) -> tuple[dt.date, dt.date]:
    """The training window ending at `day`; NoDataError (`what` skipped) until it holds
    validation_days + 1 days of sequences: the last validation_days validate, at least one trains."""
    from clickstream.pipeline.core.lake import Lake

    start, end = training_window(day, window_days)
    have = [d for d in Lake(settings.lake, settings.buckets).dates("sequences") if start <= d <= end]
    need = settings.train.validation_days + 1
    if len(have) < need:
        raise NoDataError(
            f"{what} needs {need} days of sequences in {start}..{end} of lake {Lake(settings.lake, settings.buckets)} "
            f"({settings.train.validation_days} validate), found {len(have)}: {what} skipped"
        )
    return start, end


def train_for_day(
    settings: Settings,
    day: dt.date,
    *,
    window_days: int,
    epochs: int | None = None,
    device: str = "auto",
    gpus: int = 1,
    resume: bool = False,
    nodes: int = 1,
    image: str = NightlyConfig.train_image,
    timeout_s: int = int(NightlyConfig.train_timeout.total_seconds()),
) -> dict[str, Any]:
    """Train a challenger on the sessions starting in the window ending at `day` and register it
    (alias `challenger`); the same window, data and configuration reuse the version already registered.
    `gpus` > 1 trains on that many processes of this machine; `nodes` > 1 on that many pods of `image`
    (a Kubernetes Indexed Job named after the day, waited for up to `timeout_s`), whose version this
    task then reports. `resume` (a retried task, `is_retry`)
    continues the interrupted attempt's MLflow run from its last finished epoch: checkpoints live in
    `settings.checkpoints`, which every worker sees. A checkpoint that cannot be continued (torn,
    corrupt) is passed over with a warning and the retry starts clean: unattended, it must not fail
    every retry the same way.

    Raises NoDataError (the DAG skips training) until the window holds validation_days + 1 days of
    sequences: the last validation_days validate, at least one day trains.
    """
    start, end = trainable_window(settings, day, window_days, "training")  # a skip imports no torch
    from clickstream.models.training.fit import RESUME_OR_RESTART
    from clickstream.models.training.train import train_challenger

    again = RESUME_OR_RESTART if resume else False
    if nodes > 1:  # the pods train and register; the run below then finds their version by its fingerprint
        from clickstream.pipeline.orchestrate.train_nodes import render_training, submit_training

        name = f"clickstream-train-{day:%Y%m%d}"
        manifest = render_training(name=name, nodes=nodes, gpus=gpus, start=start, end=end, epochs=epochs, image=image)
        submit_training(manifest, name=name, timeout_s=timeout_s)
    summary = train_challenger(settings, start, end, epochs=epochs, device=device, gpus=gpus, resume=again)
    return {
        "version": str(summary.version),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "val_auc": float(summary.val_auc),
        "gbm_val_auc": float(summary.gbm_val_auc),
        "reused": bool(summary.reused),
    }


def promote_challenger(settings: Settings, trained: Mapping[str, Any]) -> dict[str, Any]:
    """The champion gate for the trained version on its own validation days (the path of
    `clickstream train --promote`), recorded in the history as decided by `nightly`. Raises
    PromotionError (the task fails, the champion stays) when the champion cannot be loaded."""
    from clickstream.models.registry.champion import actor, gate_challenger

    decision = gate_challenger(settings, trained["version"], decided_by=actor("nightly"))
    return {
        "version": decision.challenger_version,
        "action": str(decision.action),
        "promoted": decision.moves_champion,
        "reason": decision.reason,
        "champion": decision.champion_after,
        "decision_id": decision.decision_id,
    }


# ---- scores and report -----------------------------------------------------------------------
def score_days(settings: Settings, start: dt.date, end: dt.date, bucket: int | None = None) -> dict[str, Any]:
    """Score the sessions of sequences/ dates in [start, end] (of `bucket`, default: every bucket)
    with the champion into scores/.

    Raises NoDataError (the DAG skips scoring) while there is no champion yet.
    Idempotent: the same champion and sequences give the same scores (only scored_at differs).
    """
    from clickstream.models.registry.store import alias_version
    from clickstream.pipeline.core.tracking import redacted, store_is_missing

    if store_is_missing(settings.tracking_uri) or alias_version(settings, CHAMPION) is None:
        raise NoDataError(
            f"no {CHAMPION} model registered yet in {redacted(settings.tracking_uri)}: "
            "scoring starts after the first promotion"
        )
    from clickstream.pipeline.serve.scoring import score_dates

    summary = score_dates(settings, start, end, bucket=bucket)
    return {
        "bucket": bucket,
        "dates": [d.isoformat() for d in summary.dates],
        "sessions": summary.sessions,
        "model_version": summary.model_version,
    }


def write_day_report(settings: Settings, day: dt.date, report_days: int) -> dict[str, Any]:
    """Write the HTML report over the `report_days` days ending at `day` to
    <home>/reports/clickstream-YYYY-MM-DD.html (replaced atomically); returns its path."""
    from clickstream.pipeline.serve.report import write_report

    out = Path(settings.home) / "reports" / f"clickstream-{day.isoformat()}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = write_report(settings, day - dt.timedelta(days=report_days - 1), day, out)
    return {"path": str(out), "summary": str(summary)}


def backfill_dates(start: str, end: str, max_days: int = 366) -> list[str]:
    """The ISO dates from `start` to `end` inclusive, ascending; ClickstreamError for a reversed or
    over-long range (a typo should not start a year of work)."""
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        raise ClickstreamError(f"backfill start {start!r} / end {end!r} must be YYYY-MM-DD dates") from None
    days = (last - first).days + 1
    if not 1 <= days <= max_days:
        raise ClickstreamError(f"backfill {start}..{end} must hold 1 to {max_days} days, not {days}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]


def rescore_recent(settings: Settings, days: int) -> dict[str, Any]:
    """Re-score the latest `days` dates of sequences/ with the (new) champion."""
    from clickstream.pipeline.core.lake import Lake

    dates = Lake(settings.lake, settings.buckets).dates("sequences")[-days:]
    if not dates:
        raise NoDataError(f"sequences/ of lake {Lake(settings.lake, settings.buckets)} is empty: nothing to re-score")
    return score_days(settings, dates[0], dates[-1])


def optimize_lake(settings: Settings) -> str:
    """Compact every table of the lake (clickstream_maintenance); returns the summary line."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import optimize

    return str(optimize(Lake(settings.lake, settings.buckets)))


def vacuum_lake(settings: Settings, retention_hours: int) -> str:
    """Delete the data files no version within `retention_hours` reads (clickstream_maintenance)."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import vacuum

    return str(vacuum(Lake(settings.lake, settings.buckets), retention_hours))


# ---- Airflow glue (airflow imported lazily) -------------------------------------------------------
def task_defaults(config: NightlyConfig = NIGHTLY) -> dict[str, Any]:
    """default_args shared by the clickstream DAGs: exponential back-off retries for
    infrastructure errors, none for input/data errors (a retry would fail the same way) except a
    commit that lost to a concurrent writer of the same rows, a timeout per task, and the failure callback."""
    from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

    return {
        "owner": "clickstream",
        "retries": config.retries,
        "retry_delay": config.retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": config.max_retry_delay,
        "retry_policy": ExceptionRetryPolicy(
            rules=[
                RetryRule(
                    exception="clickstream.pipeline.core.errors.LakeConflictError",
                    action=RetryAction.RETRY,
                    reason="a concurrent commit to the same rows",
                ),
                RetryRule(
                    exception="clickstream.pipeline.core.errors.ClickstreamError",
                    action=RetryAction.FAIL,
                    reason="input or data problem: a retry would fail the same way",
                ),
            ]
        ),
        "execution_timeout": config.task_timeout,
        "on_failure_callback": log_task_failure,
        "on_execute_callback": quiet_libraries,  # third-party chatter off the task logs
    }


def skip(reason: str) -> NoReturn:
    """Skip the running task with `reason`, logged first (as `skipped: <reason>`, the record carrying it
    as SKIP_REASON) so the task's log in the UI says why; the DAG's trigger rules skip what depends on it."""
    from airflow.sdk.exceptions import AirflowSkipException

    log.warning("skipped: %s", reason, extra={SKIP_REASON: reason})
    raise AirflowSkipException(reason)


@contextlib.contextmanager
def skip_when_no_data() -> Iterator[None]:
    """Turn a NoDataError (nothing to do for this interval) into a `skip` with its reason."""
    try:
        yield
    except NoDataError as error:
        skip(str(error))


def log_task_failure(context: Mapping[str, Any]) -> None:
    """on_failure_callback: one clear log line per failed task; the hook point for alerting."""
    ti = context.get("ti")
    interval = context.get("data_interval_start")
    log.error(
        "clickstream task FAILED: dag=%s task=%s day=%s try=%s error=%s",
        getattr(ti, "dag_id", "?"),
        getattr(ti, "task_id", "?"),
        run_day(interval) if interval else "?",
        getattr(ti, "try_number", "?"),
        " ".join(str(context.get("exception", "")).split()),
    )


async def alert_late_run(context: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """Deadline callback (runs in the triggerer): one clear log line for a run that missed its
    deadline; the hook point for alerting."""
    dag_run = (context or {}).get("dag_run", kwargs)
    log.error("clickstream run LATE: %s has not finished within %s of being queued", dag_run, NIGHTLY.late_after)


def late_run_deadline(config: NightlyConfig = NIGHTLY) -> Any:
    """A DeadlineAlert calling `alert_late_run` for a run unfinished `late_after` after it was
    queued. None where Airflow parses the DAG to run it whole in one process (`airflow dags test`:
    its parsing context names the DAG and no task), since such a run (Airflow 3.3.2) cannot be
    marked finished when the DAG has a deadline; the DAG processor, which hands the scheduler its
    DAGs, parses without a context and keeps it."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, get_parsing_context

    context = get_parsing_context()
    if context.dag_id is not None and context.task_id is None:
        return None

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=config.late_after,
        callback=AsyncCallback(alert_late_run),
    )


def is_retry(ti: Any) -> bool:
    """Whether the task instance of the running task is a retry (try_number above 1)."""
    return int(getattr(ti, "try_number", None) or 1) > 1


def train_task_options(config: NightlyConfig = NIGHTLY) -> dict[str, Any]:
    """@task arguments of the training task: the gpu pool and queue, its own timeout, the GPU
    request (`gpu_executor_config`) and, when `config.train_executor` names one, that executor;
    the KubernetesExecutor also gets the pod template `config.train_pod_template`."""
    options: dict[str, Any] = {
        "pool": config.gpu_pool,
        "queue": config.gpu_queue,
        "execution_timeout": config.train_timeout,
        "executor_config": gpu_executor_config(config.gpus_per_training),
    }
    if config.train_executor:
        options["executor"] = config.train_executor
        if config.train_executor == "KubernetesExecutor":
            options["executor_config"] = {"pod_template_file": config.train_pod_template, **options["executor_config"]}
    return options


def gpu_executor_config(gpus: int) -> dict[str, Any]:
    """executor_config for the training task: a KubernetesExecutor pod_override requesting
    `gpus` nvidia.com/gpu. The KubernetesExecutor needs a `kubernetes.client` V1Pod, so the
    override is built only where that client is installed (it comes with the cncf-kubernetes
    provider that executor needs); elsewhere (Local/Celery executors) it is empty."""
    if importlib.util.find_spec("kubernetes") is None:
        return {}
    from kubernetes.client import models as k8s

    gpu = {"nvidia.com/gpu": str(gpus)}
    container = k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(limits=gpu, requests=gpu))
    return {"pod_override": k8s.V1Pod(spec=k8s.V1PodSpec(containers=[container]))}
