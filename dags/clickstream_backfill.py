"""Re-processing DAGs: a manual backfill of a date range, and re-scoring when a new champion lands.

clickstream_backfill (manual trigger only; params `start`, `end` as YYYY-MM-DD): re-ingests each
day's landing files (one mapped task per date, `NIGHTLY.ingest_concurrency` at once; a date without
landing files is skipped with the reason), rebuilds sequences for the range and the day before it,
then re-scores the range with the champion: both mapped over the lake's session buckets
(`NIGHTLY.bucket_concurrency` at once), each instance writing only its bucket's partitions.
Idempotent: re-running a range replaces the same rows.

clickstream_rescore (runs whenever clickstream_nightly publishes the `clickstream-champion` Asset,
i.e. after a promotion): re-scores the latest `NIGHTLY.rescore_days` days of sequences/ with the
new champion, so recent scores all come from the model now in charge.

Both wire the functions of `pipeline.orchestrate.nightly` and share its task defaults (retries, timeouts,
failure callback) and its Assets (`nightly.lineage`: each task's inlets and outlets); one active run each.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, task

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate import nightly
from clickstream.pipeline.orchestrate.nightly import NIGHTLY

DATA = nightly.lineage(load_settings())
START_DATE = dt.datetime(2014, 1, 1, tzinfo=dt.UTC)


@dag(
    dag_id="clickstream_backfill",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(),
    params={
        "start": Param("2014-04-01", type="string", format="date", description="first day, YYYY-MM-DD"),
        "end": Param("2014-04-01", type="string", format="date", description="last day, YYYY-MM-DD"),
    },
    doc_md=__doc__,
    tags=["clickstream"],
)
def clickstream_backfill() -> None:
    @task
    def dates(params: dict[str, Any] | None = None) -> list[str]:
        params = params or {}
        return nightly.backfill_dates(str(params["start"]), str(params["end"]))

    @task(  # each its own batch: commits never collide
        inlets=[DATA.landing],
        outlets=[DATA.events, DATA.quarantine],
        max_active_tis_per_dagrun=NIGHTLY.ingest_concurrency,
    )
    def ingest_day(day: str) -> dict[str, Any]:
        settings = load_settings()
        with nightly.skip_when_no_data():
            batch = nightly.find_landing(settings, dt.date.fromisoformat(day))
        return nightly.ingest_landing(settings, batch)

    @task(trigger_rule="none_failed_min_one_success")
    def buckets() -> list[int]:
        return nightly.bucket_numbers(load_settings())

    @task(
        inlets=[DATA.events, DATA.scores, DATA.champion],  # re-scores the rebuilt days that had scores
        outlets=[DATA.sequences, DATA.scores, DATA.cookie_intent],
        max_active_tis_per_dagrun=NIGHTLY.bucket_concurrency,
    )
    def build_sequences(bucket: int, days: list[str]) -> dict[str, Any]:
        first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
        return nightly.rebuild_sequences(load_settings(), first, last, bucket=bucket)

    @task(
        inlets=[DATA.sequences, DATA.champion],
        outlets=[DATA.scores, DATA.cookie_intent],
        max_active_tis_per_dagrun=NIGHTLY.bucket_concurrency,
    )
    def score(bucket: int, days: list[str]) -> dict[str, Any]:
        with nightly.skip_when_no_data():
            first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
            return nightly.score_days(load_settings(), first, last, bucket)

    @task
    def scores_published(scored: list[dict[str, Any]]) -> int:
        return nightly.sessions_scored(scored)

    days = dates()
    bucket_list = buckets()
    ingest_day.expand(day=days) >> bucket_list
    built = build_sequences.partial(days=days).expand(bucket=bucket_list)
    scored = score.partial(days=days).expand(bucket=bucket_list)
    built >> scored
    scores_published(scored)


@dag(
    dag_id="clickstream_rescore",
    schedule=[DATA.champion],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(),
    doc_md=__doc__,
    tags=["clickstream"],
)
def clickstream_rescore() -> None:
    @task(inlets=[DATA.sequences, DATA.champion], outlets=[DATA.scores, DATA.cookie_intent])
    def rescore() -> dict[str, Any]:
        with nightly.skip_when_no_data():
            return nightly.rescore_recent(load_settings(), NIGHTLY.rescore_days)

    rescore()


BACKFILL_DAG = clickstream_backfill()
RESCORE_DAG = clickstream_rescore()
