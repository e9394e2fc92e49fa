"""clickstream_nightly: every night, the day's click logs become fresh scores and, when it beats the
champion, a new buying-intent model.

When: daily (`NIGHTLY.schedule`, default `@daily` UTC), no catch-up, one active run at a time.
A run covers the UTC day its data interval starts on (`airflow dags test clickstream_nightly
2014-04-08` covers 2014-04-07), never the wall clock.

What, in order:
1. find_landing: the day's raw files in `<landing>/YYYY-MM-DD/`. None there: the task is
   SKIPPED with the reason and so is everything after it (the run still succeeds).
2. ingest: raw files -> events/ (bad rows -> quarantine/), one mapped instance per landing file
   (one for the day where buys files complete the clicks).
3. build_sequences: one mapped instance per session bucket of the lake (`CLICKSTREAM_BUCKETS`),
   each writing only its bucket's partitions: sequences/ for the day and the day before (sessions
   crossing midnight); then the dates marked for rebuild, with the days around them: those the
   ingests' batches no longer have (a re-delivered file with fewer dates) and any whose events are
   gone. Their scores are cleared where their sequences went, and re-scored with the champion where
   they were rebuilt. sequences_built sums the buckets up for what follows.
4. train: a challenger on the rolling window (param `window_days`, default 30) ending at the day,
   in pool/queue `gpu` (and the executor `CLICKSTREAM_TRAIN_EXECUTOR`, when set), on
   `NIGHTLY.gpus_per_training` GPUs. A retry resumes from the last finished epoch (checkpoints are
   in the lake's `_checkpoints/`, or `CLICKSTREAM_CHECKPOINTS`). Skipped, with the reason, until the
   window holds validation_days + 1 days.
5. promote_if_better: the challenger becomes `champion` only if it beats it by more than the
   margin on the same validation sessions (each decision is appended to the champion's history;
   a champion that cannot be loaded fails the task and stays); announce_champion then publishes
   the `clickstream-champion` Asset (which triggers clickstream_rescore) and is skipped when the
   champion stays.
6. score: the day's (and the rebuilt previous day's) sessions with the champion -> scores/, one
   mapped instance per bucket, each also updating its bucket's cookie_intent; scores_published
   sums them up. Skipped while there is no champion yet. It runs even when training failed, so
   analysts still get scores from the current champion.

Mapped instances run `NIGHTLY.bucket_concurrency` at a time in a run, on any Celery worker or
Kubernetes pod; one that fails is retried alone.
7. report: the HTML report of the last days under <CLICKSTREAM_HOME>/reports/ (that folder's Asset
   gets one event per night, once every bucket is scored).

Param `train` false leaves the day out of training (train, promote_if_better and
announce_champion skip): it is scored by the current champion, after that model's window.

Lineage: every stage task declares the data it reads and writes as inlets and outlets, Assets with
URIs (`pipeline.orchestrate.nightly.lineage`): the landing folder, the lake tables (`file://` or
`s3://` URI per table), the model's `challenger` and `champion` (`models:/NAME@ALIAS`), the reports.

Every task is idempotent for its day and passes only small values through XCom. Input/data
errors fail at once; other errors retry with exponential back-off. The steps are the functions of
`pipeline.orchestrate.nightly`; schedule, window and resources are `pipeline.orchestrate.nightly.NIGHTLY`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate import nightly
from clickstream.pipeline.orchestrate.nightly import NIGHTLY

DATA = nightly.lineage(load_settings())


@dag(
    dag_id="clickstream_nightly",
    schedule=CronDataIntervalTimetable(NIGHTLY.schedule, timezone="UTC"),
    start_date=dt.datetime(2014, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(),
    params={
        "window_days": Param(NIGHTLY.window_days, type="integer", minimum=1, description="training window in days"),
        "epochs": Param(NIGHTLY.epochs, type=["null", "integer"], minimum=1, description="max epochs (null: default)"),
        "device": Param(NIGHTLY.device, type="string", enum=["auto", "cpu", "cuda"], description="where to train"),
        "train": Param(True, type="boolean", description="false: the day is scored, not trained on"),
    },
    deadline=nightly.late_run_deadline(),
    doc_md=__doc__,
    tags=["clickstream"],
)
def clickstream_nightly() -> None:
    @task(inlets=[DATA.landing])
    def find_landing(data_interval_start: dt.datetime | None = None) -> dict[str, Any]:
        with nightly.skip_when_no_data():
            return nightly.find_landing(load_settings(), nightly.run_day(data_interval_start))

    @task
    def landing_files(found: dict[str, Any]) -> list[dict[str, Any]]:
        return nightly.landing_batches(found)

    @task(
        inlets=[DATA.landing],
        outlets=[DATA.events, DATA.quarantine],
        max_active_tis_per_dagrun=NIGHTLY.bucket_concurrency,
    )
    def ingest(batch: dict[str, Any]) -> dict[str, Any]:
        return nightly.ingest_landing(load_settings(), batch)

    @task
    def buckets(ingested: list[dict[str, Any]]) -> list[int]:
        return nightly.bucket_numbers(load_settings())

    @task(
        inlets=[DATA.events, DATA.scores, DATA.champion],  # re-scores the rebuilt days that had scores
        outlets=[DATA.sequences, DATA.scores, DATA.cookie_intent],
        max_active_tis_per_dagrun=NIGHTLY.bucket_concurrency,
    )
    def build_sequences(bucket: int, ingested: list[dict[str, Any]]) -> dict[str, Any]:
        day = dt.date.fromisoformat(ingested[0]["day"])
        dropped = nightly.dropped_dates(ingested)
        return nightly.rebuild_sequences(load_settings(), day, day, dropped=dropped, bucket=bucket)

    @task
    def sequences_built(built: list[dict[str, Any]]) -> dict[str, Any]:
        return nightly.merge_built(built)

    @task(inlets=[DATA.sequences], outlets=[DATA.challenger], **nightly.train_task_options())
    def train(built: dict[str, Any], params: dict[str, Any] | None = None, ti: Any = None) -> dict[str, Any]:
        params = params or {}
        if params.get("train") is False:
            nightly.skip("param train is false: the day is scored by the current champion, not trained on")
        with nightly.skip_when_no_data():
            return nightly.train_for_day(
                load_settings(),
                dt.date.fromisoformat(built["end"]),
                window_days=int(params.get("window_days") or NIGHTLY.window_days),
                epochs=params.get("epochs"),
                device=params.get("device") or NIGHTLY.device,
                gpus=NIGHTLY.gpus_per_training,
                resume=nightly.is_retry(ti),  # a retry continues the failed attempt's last finished epoch
                nodes=NIGHTLY.train_nodes,
                image=NIGHTLY.train_image,
            )

    @task(inlets=[DATA.challenger, DATA.champion, DATA.sequences])  # announce_champion publishes a move
    def promote_if_better(trained: dict[str, Any]) -> dict[str, Any]:
        return nightly.promote_challenger(load_settings(), trained)

    @task(outlets=[DATA.champion])
    def announce_champion(decision: dict[str, Any], outlet_events: Any = None) -> str:
        if not decision["promoted"]:
            nightly.skip(f"champion unchanged: {decision['reason']}")
        outlet_events[DATA.champion].extra = {"version": decision["version"]}
        return decision["version"]

    @task(
        inlets=[DATA.sequences, DATA.champion],
        outlets=[DATA.scores, DATA.cookie_intent],
        trigger_rule="all_done",
        max_active_tis_per_dagrun=NIGHTLY.bucket_concurrency,
    )
    def score(bucket: int, built: dict[str, Any] | None) -> dict[str, Any]:
        if not built:
            nightly.skip("no sequences were built in this run: nothing to score")
        with nightly.skip_when_no_data():
            first, last = dt.date.fromisoformat(built["dates"][0]), dt.date.fromisoformat(built["end"])
            return nightly.score_days(load_settings(), first, last, bucket)

    @task
    def scores_published(scored: list[dict[str, Any]]) -> int:
        return nightly.sessions_scored(scored)

    @task(inlets=[DATA.scores, DATA.champion], outlets=[DATA.reports])
    def report(built: dict[str, Any]) -> dict[str, Any]:
        return nightly.write_day_report(load_settings(), dt.date.fromisoformat(built["end"]), NIGHTLY.report_days)

    ingested = ingest.expand(batch=landing_files(find_landing()))
    bucket_list = buckets(ingested)
    built = sequences_built(build_sequences.partial(ingested=ingested).expand(bucket=bucket_list))
    decision = promote_if_better(train(built))
    announce_champion(decision)
    scored = score.partial(built=built).expand(bucket=bucket_list)
    decision >> scored
    scores_published(scored) >> report(built)


NIGHTLY_DAG = clickstream_nightly()
