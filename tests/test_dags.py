"""The DAG files: they parse without errors or heavy imports, wire the expected tasks with
retries, timeouts, the gpu pool/queue and the Assets each reads and writes, and (slow) run end to
end through Airflow and MLflow, leaving each task's log where the UI reads it."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from clickstream.pipeline.core.config import CHAMPION, Settings, load_settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.orchestrate.airflow_home import (
    DAGS_FOLDER,
    DagRunResult,
    airflow_environ,
    clickstream_environ,
    init_metadata,
    run_dag_for_day,
    task_log_path,
)
from clickstream.pipeline.orchestrate.nightly import MAINTENANCE, NIGHTLY, Lineage, lineage
from clickstream.pipeline.orchestrate.tuning import TUNE

NIGHTLY_TASKS = {
    "find_landing",
    "landing_files",
    "ingest",
    "buckets",
    "build_sequences",
    "sequences_built",
    "train",
    "promote_if_better",
    "announce_champion",
    "score",
    "scores_published",
    "report",
}
HEAVY = ("torch", "polars", "mlflow", "pyarrow", "numpy", "pandas", "sklearn", "lightgbm")


@pytest.fixture(scope="module")
def parsed_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The settings in the environment while `dagbag` parses the DAG files: a private lake and state folder."""
    root = tmp_path_factory.mktemp("parsed")
    return load_settings(lake=str(root / "lake"), home=root / "state", environ={})


@pytest.fixture(scope="module")
def dagbag(parsed_settings: Settings):
    """The DAG files as a worker parses them, with `parsed_settings` in its environment (and only then)."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as patch:
        for name, value in clickstream_environ(parsed_settings).items():
            patch.setenv(name, value)
        return DagBag(dag_folder=str(DAGS_FOLDER))


def test_given_the_dags_folder_when_parsed_then_no_import_errors_and_five_dags(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {
        "clickstream_nightly",
        "clickstream_backfill",
        "clickstream_rescore",
        "clickstream_tune",
        "clickstream_maintenance",
    }


def test_given_the_nightly_dag_then_daily_interval_schedule_no_catchup_one_active_run(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["clickstream_nightly"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert set(dag.params) == {"window_days", "epochs", "device", "train"}
    assert dag.params["train"] is True
    assert dag.params["window_days"] == NIGHTLY.window_days
    assert dag.deadline and dag.deadline[0].interval == NIGHTLY.late_after
    assert dag.doc_md and "skip" in dag.doc_md.lower()


def test_given_the_nightly_dag_then_its_tasks_run_in_order(dagbag):
    dag = dagbag.dags["clickstream_nightly"]
    assert set(dag.task_dict) == NIGHTLY_TASKS
    chain = [
        "find_landing",
        "landing_files",
        "ingest",
        "buckets",
        "build_sequences",
        "sequences_built",
        "train",
        "promote_if_better",
        "announce_champion",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in dag.task_dict[upstream].downstream_task_ids
    assert dag.task_dict["score"].upstream_task_ids == {"buckets", "sequences_built", "promote_if_better"}
    assert dag.task_dict["score"].trigger_rule == "all_done"  # scores even when training failed
    assert dag.task_dict["report"].upstream_task_ids == {"sequences_built", "scores_published"}
    # per landing file and per bucket: mapped, several at once, each instance retried alone
    for name in ("ingest", "build_sequences", "score"):
        assert dag.task_dict[name].is_mapped, name
        assert dag.task_dict[name].max_active_tis_per_dagrun == NIGHTLY.bucket_concurrency > 1, name


def test_given_the_train_task_then_gpu_pool_queue_and_its_own_timeout(dagbag):
    train = dagbag.dags["clickstream_nightly"].task_dict["train"]
    assert (train.pool, train.queue) == ("gpu", "gpu")
    assert train.execution_timeout == NIGHTLY.train_timeout


DAG_IDS = ["clickstream_nightly", "clickstream_backfill", "clickstream_rescore", "clickstream_tune"]


@pytest.mark.parametrize("dag_id", [*DAG_IDS, "clickstream_maintenance"])
def test_given_every_task_then_retries_with_backoff_a_timeout_and_a_failure_callback(dagbag, dag_id):
    for task in dagbag.dags[dag_id].tasks:
        assert task.retries == NIGHTLY.retries, task.task_id
        assert task.retry_exponential_backoff > 1, task.task_id
        assert task.execution_timeout is not None, task.task_id
        assert task.on_failure_callback, task.task_id
        assert task.retry_policy is not None, task.task_id


# What each stage task reads and writes (inlets, outlets), by DAG: the lineage OpenLineage reports
STAGE_ASSETS = {
    "clickstream_nightly": {
        "find_landing": ({"landing"}, set()),
        "ingest": ({"landing"}, {"events", "quarantine"}),
        "build_sequences": ({"events", "scores", "champion"}, {"sequences", "scores", "cookie_intent"}),
        "train": ({"sequences"}, {"challenger"}),
        "promote_if_better": ({"challenger", "champion", "sequences"}, set()),  # announce_champion publishes a move
        "announce_champion": (set(), {"champion"}),
        "score": ({"sequences", "champion"}, {"scores", "cookie_intent"}),
        "report": ({"scores", "champion"}, {"reports"}),
    },
    "clickstream_backfill": {
        "ingest_day": ({"landing"}, {"events", "quarantine"}),
        "build_sequences": ({"events", "scores", "champion"}, {"sequences", "scores", "cookie_intent"}),
        "score": ({"sequences", "champion"}, {"scores", "cookie_intent"}),
    },
    "clickstream_rescore": {"rescore": ({"sequences", "champion"}, {"scores", "cookie_intent"})},
}


def _names(data: Lineage, assets: list) -> set[str]:
    by_uri = {getattr(data, field).uri: field for field in data.__dataclass_fields__}
    return {by_uri[asset.uri] for asset in assets}


@pytest.mark.parametrize("dag_id", sorted(STAGE_ASSETS))
def test_given_every_stage_task_then_its_inlets_and_outlets_are_the_assets_it_reads_and_writes(
    dagbag, parsed_settings, dag_id
):
    data = lineage(parsed_settings)  # the Assets of the settings the DAG files were parsed with
    dag = dagbag.dags[dag_id]
    tasks = {task_id: (_names(data, t.inlets), _names(data, t.outlets)) for task_id, t in dag.task_dict.items()}
    assert {task_id: tasks[task_id] for task_id in STAGE_ASSETS[dag_id]} == STAGE_ASSETS[dag_id]
    glue = {task_id: io for task_id, io in tasks.items() if task_id not in STAGE_ASSETS[dag_id]}
    assert all(io == (set(), set()) for io in glue.values()), glue  # no lineage claimed where no data is touched


def test_given_the_dag_assets_then_uris_per_lake_table_and_model_alias_and_rescore_runs_on_the_champion(
    dagbag, parsed_settings
):
    announce = dagbag.dags["clickstream_nightly"].task_dict["announce_champion"]
    (champion,) = announce.outlets
    assert (champion.name, champion.uri) == ("clickstream-champion", "models:/clickstream-buy-intent@champion")
    assert [(a.name, a.uri) for a in dagbag.dags["clickstream_rescore"].schedule] == [(champion.name, champion.uri)]
    scores = dagbag.dags["clickstream_nightly"].task_dict["score"].outlets[0]
    assert scores.uri == (Path(parsed_settings.lake) / "scores").as_uri()


def test_given_the_tune_dag_then_manual_one_gpu_task_with_its_budget_as_params(dagbag):
    dag = dagbag.dags["clickstream_tune"]
    assert dag.schedule is None and TUNE.schedule is None
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.params) == {"trials", "timeout_s", "window_days", "device"}
    assert dag.params["trials"] == TUNE.trials
    (task,) = dag.tasks
    assert (task.task_id, task.pool, task.queue) == ("tune", "gpu", "gpu")
    assert task.execution_timeout == TUNE.task_timeout
    assert dag.doc_md and "@weekly" in dag.doc_md


def test_given_the_backfill_dag_then_manual_with_a_mapped_ingest_per_date_several_at_once(dagbag):
    dag = dagbag.dags["clickstream_backfill"]
    assert dag.schedule is None
    assert set(dag.params) == {"start", "end"}
    assert set(dag.task_dict) == {"dates", "ingest_day", "buckets", "build_sequences", "score", "scores_published"}
    assert dag.task_dict["build_sequences"].is_mapped and dag.task_dict["score"].is_mapped
    assert dag.task_dict["ingest_day"].is_mapped
    # ingests of different batches commit to the same dates concurrently (Delta), so more than one runs
    assert dag.task_dict["ingest_day"].max_active_tis_per_dagrun == NIGHTLY.ingest_concurrency > 1


def test_given_the_maintenance_dag_then_weekly_optimize_then_vacuum_keeping_a_week(dagbag):
    dag = dagbag.dags["clickstream_maintenance"]
    assert dag.schedule == MAINTENANCE.schedule and MAINTENANCE.schedule.endswith("* * 0")  # Sundays
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.task_dict["vacuum"].upstream_task_ids == {"optimize"}
    assert MAINTENANCE.retention_hours >= 7 * 24


def test_given_a_fresh_interpreter_when_the_dag_files_are_imported_then_no_heavy_library_is_loaded():
    code = (
        "import runpy, sys\n"
        f"for name in ('clickstream_nightly', 'clickstream_backfill', 'clickstream_tune'):\n"
        f"    runpy.run_path({str(DAGS_FOLDER)!r} + '/' + name + '.py')\n"
        f"print('HEAVY=' + ','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "HEAVY=\n" in done.stdout


# ---- end to end through Airflow (dag.test) and MLflow on SQLite -------------------------------------
START = dt.date(2014, 4, 1)
DAYS = 3


def _partition_hashes(settings: Settings, table: str) -> dict[str, str]:
    lake = Lake(settings.lake)
    return {
        "/".join(path.split("/")[-3:-1]): hashlib.sha256(Path(path).read_bytes()).hexdigest()
        for path in lake.files(table)
    }


def _versions(settings: Settings) -> list[str]:
    from clickstream.models.registry.store import tracking_client

    client = tracking_client(settings)
    return sorted(v.version for v in client.search_model_versions(f"name='{settings.model_name}'"))


def _states(tasks: dict[str, str], task: str) -> set[str]:
    """The states of `task`'s instances in a run's `tasks` (a mapped task has one per map index)."""
    return {state for name, state in tasks.items() if name == task or name.startswith(f"{task}[")}


def _run_nightly_days(root: Path, buckets: int) -> tuple[Settings, list]:
    """Three generated landing days run through clickstream_nightly in order, day by day, on a lake
    of `buckets` buckets (the environment stays set for the caller's further runs)."""
    from clickstream.pipeline.synthetic.generate import generate_logs

    environ = {"CLICKSTREAM_BUCKETS": str(buckets)}
    settings = load_settings(lake=str(root / "lake"), home=root / "state", environ=environ)
    generate_logs(Path(settings.landing), sessions=DAYS * 600, days=DAYS, start_date=START, seed=3, by_day=True)
    for name, value in {**clickstream_environ(settings), **environ}.items():
        os.environ[name] = value
    init_metadata()
    return settings, [run_dag_for_day("clickstream_nightly", START + dt.timedelta(days=i)) for i in range(DAYS)]


@pytest.fixture(scope="module")
def nightly_lake(tmp_path_factory):
    """Three generated landing days run through clickstream_nightly in order, day by day."""
    saved = dict(os.environ)
    yield _run_nightly_days(tmp_path_factory.mktemp("nightly"), buckets=1)
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
def test_given_landing_days_when_the_nightly_dag_runs_then_every_task_ends_as_documented(nightly_lake):
    _, results = nightly_lake
    assert all(r.succeeded for r in results), [r.tasks for r in results]
    first, last = results[0], results[-1]
    assert first.tasks["train"] == "skipped"  # one day of history: too little to validate
    assert _states(first.tasks, "score") == {"skipped"}  # no champion yet
    for task in NIGHTLY_TASKS - {"announce_champion"}:
        assert _states(last.tasks, task) == {"success"}, (task, last.tasks)
    assert last.tasks["announce_champion"] in {"success", "skipped"}  # skipped: the champion stayed


@pytest.mark.slow
def test_given_four_buckets_when_the_nightly_dag_runs_then_four_instances_of_each_and_the_same_scores(
    nightly_lake, tmp_path_factory
):
    one, _ = nightly_lake
    saved = dict(os.environ)
    try:
        four, results = _run_nightly_days(tmp_path_factory.mktemp("nightly-4"), buckets=4)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert all(r.succeeded for r in results), [r.tasks for r in results]
    for task in ("build_sequences", "score"):
        assert {f"{task}[{i}]" for i in range(4)} <= set(results[-1].tasks), results[-1].tasks
        assert _states(results[-1].tasks, task) == {"success"}
    assert Lake(four.lake).buckets == 4
    assert Lake(four.lake).read("scores").get_column("bucket").n_unique() == 4

    def scores(settings: Settings) -> pl.DataFrame:
        return Lake(settings.lake).read("scores").drop("bucket", "scored_at").sort("session_id")

    left, right = scores(one), scores(four)
    assert left.drop("score").equals(right.drop("score"))
    assert (left["score"] - right["score"]).abs().max() <= 1e-6


@pytest.mark.slow
def test_given_the_nightly_runs_then_lake_partitions_champion_and_scores_exist(nightly_lake):
    from clickstream.models.registry.store import alias_version

    settings, _ = nightly_lake
    lake = Lake(settings.lake)
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    assert set(days) <= set(lake.dates("events"))
    assert set(days) <= set(lake.dates("sequences"))
    assert alias_version(settings, CHAMPION) is not None
    assert days[-1] in lake.dates("scores")
    assert lake.scan("scores", days[-1], days[-1]).collect().height > 0
    assert (Path(settings.home) / "reports" / f"clickstream-{days[-1]}.html").exists()


@pytest.mark.slow
def test_given_a_finished_day_when_it_runs_again_then_partitions_and_model_versions_are_unchanged(nightly_lake):
    from clickstream.models.registry.champion import decision_history

    settings, _ = nightly_lake
    before = {t: _partition_hashes(settings, t) for t in ("events", "quarantine", "sequences")}
    versions = _versions(settings)
    decisions = [(d.decision_id, d.to_record()) for d in decision_history(settings)]
    again = run_dag_for_day("clickstream_nightly", START + dt.timedelta(days=DAYS - 1))
    assert again.succeeded, again.tasks
    assert {t: _partition_hashes(settings, t) for t in before} == before
    assert _versions(settings) == versions
    after = [(d.decision_id, d.to_record()) for d in decision_history(settings)]
    assert after[: len(decisions)] == decisions  # every earlier record unchanged, the re-run appended
    assert [fields["action"] for _, fields in after[len(decisions) :]] == ["no-op"]  # the re-used champion


@pytest.mark.slow
def test_given_a_worse_challenger_when_the_nightly_dag_runs_then_the_champion_is_unchanged(nightly_lake):
    from clickstream.models.registry.store import alias_version

    settings, _ = nightly_lake
    champion = alias_version(settings, CHAMPION)
    worse = run_dag_for_day("clickstream_nightly", START + dt.timedelta(days=DAYS - 1), conf={"epochs": 1})
    assert worse.succeeded, worse.tasks
    assert worse.tasks["promote_if_better"] == "success"
    assert worse.tasks["announce_champion"] == "skipped"
    assert alias_version(settings, CHAMPION) == champion


@pytest.mark.slow
def test_given_a_day_without_landing_files_when_the_nightly_dag_runs_then_it_is_skipped_cleanly(nightly_lake):
    settings, _ = nightly_lake
    scores_before = _partition_hashes(settings, "scores")
    empty = run_dag_for_day("clickstream_nightly", START + dt.timedelta(days=30))
    assert empty.succeeded
    assert set(empty.tasks.values()) == {"skipped"}, empty.tasks
    assert _partition_hashes(settings, "scores") == scores_before


def _log(result: DagRunResult, task_id: str, map_index: int = -1) -> list[dict]:
    """The lines of `task_id`'s log (first try) in `result`'s run, where the UI reads them."""
    ti = SimpleNamespace(dag_id=result.dag_id, run_id=result.run_id, task_id=task_id, map_index=map_index, try_number=1)
    return [json.loads(line) for line in task_log_path(ti).read_text().splitlines()]


@pytest.mark.slow
def test_given_the_nightly_runs_then_each_task_log_holds_its_skip_reason_or_its_stage_summary(nightly_lake):
    _, results = nightly_lake
    first, last = results[0], results[-1]
    reason = first.skipped["train"]
    assert reason.startswith("training needs") and reason.endswith("found 1: training skipped")
    assert f"skipped: {reason}" in [line["event"] for line in _log(first, "train")]
    done = [line["event"] for line in _log(last, "ingest", map_index=0) if line["event"].startswith("Done.")]
    assert len(done) == 1 and "'rows_written': " in done[0]  # the stage's summary, as the task returned it


@pytest.mark.slow
def test_given_param_train_false_when_the_nightly_dag_runs_then_the_day_is_scored_but_not_trained_on(nightly_lake):
    settings, _ = nightly_lake
    versions = _versions(settings)
    held_out = run_dag_for_day("clickstream_nightly", START + dt.timedelta(days=DAYS - 1), conf={"train": False})
    assert held_out.succeeded, held_out.tasks
    assert [held_out.tasks[t] for t in ("train", "promote_if_better", "announce_champion")] == ["skipped"] * 3
    assert _states(held_out.tasks, "score") == {"success"} and held_out.tasks["report"] == "success"
    assert held_out.skipped["train"].startswith("param train is false")
    assert _versions(settings) == versions


@pytest.mark.slow
def test_given_airflow_dags_test_when_a_day_without_landing_files_runs_then_the_run_finishes(tmp_path):
    settings = load_settings(lake=str(tmp_path / "lake"), home=tmp_path / "state", environ={})
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CLICKSTREAM", "MLFLOW"))}
    environ |= airflow_environ(settings)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=environ, capture_output=True, check=True, timeout=300)
    done = subprocess.run(
        [*airflow, "dags", "test", "clickstream_nightly", "2014-03-02"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # the deadline left out, the run ends
    assert "skipped: no landing files for 2014-03-01" in done.stdout + done.stderr


@pytest.mark.slow
def test_given_finished_days_when_backfilled_then_each_date_is_reingested_and_partitions_are_unchanged(nightly_lake):
    settings, _ = nightly_lake
    before = {t: _partition_hashes(settings, t) for t in ("events", "sequences")}
    last = START + dt.timedelta(days=DAYS - 1)
    run = run_dag_for_day("clickstream_backfill", last, conf={"start": START.isoformat(), "end": last.isoformat()})
    assert run.succeeded, run.tasks
    assert [run.tasks[f"ingest_day[{i}]"] for i in range(DAYS)] == ["success"] * DAYS
    assert _states(run.tasks, "score") == _states(run.tasks, "build_sequences") == {"success"}
    assert run.tasks["scores_published"] == "success"
    assert {t: _partition_hashes(settings, t) for t in before} == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("executor", "configured", "expected"),
    [
        ("LocalExecutor", "LocalExecutor", "executor=LocalExecutor errors=0"),
        ("KubernetesExecutor", "LocalExecutor", "specifies executor 'KubernetesExecutor', which is not available"),
    ],
)
def test_given_clickstream_train_executor_when_parsed_then_train_selects_it_if_airflow_has_it(
    executor, configured, expected
):
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        "dag = bag.dags.get('clickstream_nightly')\n"
        "print('executor=%s errors=%d' % (dag.task_dict['train'].executor if dag else None, len(bag.import_errors)))\n"
        "print(*bag.import_errors.values())\n"
    )
    env = {**os.environ, "CLICKSTREAM_TRAIN_EXECUTOR": executor, "AIRFLOW__CORE__EXECUTOR": configured}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout
