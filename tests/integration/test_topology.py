"""One nightly run on the production topology: Airflow's scheduler (CeleryExecutor, Redis broker,
PostgreSQL metadata) sends training to the `gpu` queue's worker and everything else to the two
default workers (the lake has 4 session buckets: the bucket-wise tasks' mapped instances run on
both), MLflow (PostgreSQL backend, artifacts in S3) ends with a champion, and the lake lives in S3.
See topology.py for how the services are brought up; .ci/integration.sh runs this.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest
from topology import BIN, DEFAULT_WORKER_2_HOST, DEFAULT_WORKER_HOST, GPU_WORKER_HOST, REPO, Topology, missing_programs

pytestmark = pytest.mark.integration

DAG_ID = "clickstream_nightly"
RUN_DAY = dt.date(2014, 4, 8)  # the day the triggered run covers
HISTORY_DAYS = 3  # earlier days already in the lake: the window then holds validation_days + 2 days
SESSIONS_PER_DAY = 500  # about 27 buyers a day: enough positives for training and validation
RUN_DEADLINE_S = 600


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    if missing := missing_programs():
        pytest.skip(f"needs {', '.join(missing)} (installed by .ci/integration.sh)")
    if not (REPO / "dags" / f"{DAG_ID}.py").exists():
        pytest.skip(f"dags/{DAG_ID}.py is not there")
    with Topology(tmp_path_factory.mktemp("topology")) as topo:
        yield topo
    left = [s.name for s in topo.services if _alive(s.process.pid)]
    assert not left, f"still running after the topology stopped: {left}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _land_days(topo: Topology) -> Path:
    """YOOCHOOSE-format landing folders for the history days and the run's day."""
    from clickstream.pipeline.synthetic.generate import generate_logs

    landing = Path(topo.env["CLICKSTREAM_LANDING"])
    first = RUN_DAY - dt.timedelta(days=HISTORY_DAYS)
    generate_logs(
        landing, sessions=SESSIONS_PER_DAY * (HISTORY_DAYS + 1), days=HISTORY_DAYS + 1,
        start_date=first, seed=11, by_day=True,
    )
    return landing


def _load_history(topo: Topology, landing: Path) -> None:
    """The days before the run's day, ingested and sequenced into the S3 lake with the CLI."""
    days = [RUN_DAY - dt.timedelta(days=n) for n in range(HISTORY_DAYS, 0, -1)]
    clicks = sorted(str(p) for day in days for p in (landing / day.isoformat()).glob("*clicks*.dat*"))
    buys = sorted(str(p) for day in days for p in (landing / day.isoformat()).glob("*buys*.dat*"))
    assert clicks and buys, f"the generator left no YOOCHOOSE files in {landing}"
    clickstream = str(BIN / "clickstream")
    topo.run([clickstream, "ingest", "--format", "yoochoose", *clicks, *[a for b in buys for a in ("--buys", b)]])
    topo.run([clickstream, "sequences", "--start", days[0].isoformat(), "--end", days[-1].isoformat()])


def test_a_nightly_run_trains_on_the_gpu_worker_and_sets_the_champion(topology: Topology) -> None:
    topo = topology
    _load_history(topo, _land_days(topo))
    run_id = f"integration__{RUN_DAY.isoformat()}"
    # A daily run covers the day its data interval starts: the interval ending at the next midnight.
    logical = dt.datetime.combine(RUN_DAY + dt.timedelta(days=1), dt.time(), dt.UTC)
    try:
        topo.trigger(DAG_ID, logical.isoformat(), run_id, conf={"epochs": 2, "device": "cpu"})
        state = topo.wait_for_run(DAG_ID, run_id, RUN_DEADLINE_S)
        instances = topo.task_instances(DAG_ID, run_id)
        summary = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["queue"], ti["hostname"]) for ti in instances}
        assert state == "success", summary

        (train,) = [ti for ti in instances if ti["task_id"] == "train"]
        assert (train["state"], train["queue"], train["hostname"]) == ("success", "gpu", GPU_WORKER_HOST)
        assert train["pool"] == "gpu"
        defaults = {DEFAULT_WORKER_HOST, DEFAULT_WORKER_2_HOST}
        others = [ti for ti in instances if ti["task_id"] != "train" and ti["state"] == "success"]
        assert others and all(ti["hostname"] in defaults for ti in others), summary
        assert all(ti["queue"] != "gpu" for ti in others), summary
        mapped = [ti for ti in others if ti["task_id"] in {"build_sequences", "score"}]
        assert sorted((ti["task_id"], ti["map_index"]) for ti in mapped) == [
            (task, bucket) for task in ("build_sequences", "score") for bucket in range(4)
        ], summary
        assert {ti["hostname"] for ti in mapped} == defaults, summary  # fanned out over both workers

        from mlflow import MlflowClient

        champion = MlflowClient(topo.tracking_uri).get_model_version_by_alias("clickstream-buy-intent", "champion")
        assert champion.status == "READY"
        artifacts = topo.s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0)
        assert artifacts > 0, "the model's artifacts should be in S3"
        scores = topo.s3.list_objects_v2(Bucket="lake", Prefix=f"lake/scores/date={RUN_DAY}/")
        assert [o["Key"] for o in scores.get("Contents", [])], "the day's scores should be in S3"
        assert {o["Key"].split("/")[3] for o in scores["Contents"]} == {f"bucket={b}" for b in range(4)}
        assert all(o["Key"].endswith(".parquet") for o in scores["Contents"])
        log = topo.s3.list_objects_v2(Bucket="lake", Prefix="lake/scores/_delta_log/")
        assert any(o["Key"].endswith(".json") for o in log.get("Contents", [])), "scores should be a Delta table"
    except BaseException:
        print(topo.log_tails(), file=sys.stderr)
        raise

