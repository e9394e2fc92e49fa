"""clickstream_tune: search the buying-intent model's settings; the nightly training uses the best.

When: on manual trigger (`TUNE.schedule` None); set it to "@weekly" to search every week.
What: one task, `tune`, in pool/queue `gpu` (like nightly training): Optuna trials (param `trials`,
no new trial after `timeout_s`) on the training window of `window_days` days ending at the newest
sequences day, each a nested MLflow run, pruned on per-epoch validation AUC. The best settings go
to `<lake>/_config/training.json` with the feature signature they were tuned for; nightly training
applies them only to that signature. Skipped, with the reason, while the window is too short.
The step is `pipeline.orchestrate.tuning.tune_latest`; schedule and budget are `TUNE`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.types import DagRunProtocol

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate import nightly, tuning
from clickstream.pipeline.orchestrate.nightly import NIGHTLY
from clickstream.pipeline.orchestrate.tuning import TUNE


@dag(
    dag_id="clickstream_tune",
    schedule=TUNE.schedule,
    start_date=dt.datetime(2014, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(),
    params={
        "trials": Param(TUNE.trials, type="integer", minimum=1, description="trials at most"),
        "timeout_s": Param(TUNE.timeout_s, type="integer", minimum=1, description="no new trial after (s)"),
        "window_days": Param(TUNE.window_days, type="integer", minimum=1, description="window in days"),
        "device": Param(NIGHTLY.device, type="string", enum=["auto", "cpu", "cuda"], description="where to train"),
    },
    doc_md=__doc__,
    tags=["clickstream"],
)
def clickstream_tune() -> None:
    @task(
        pool=NIGHTLY.gpu_pool,
        queue=NIGHTLY.gpu_queue,
        executor_config=nightly.gpu_executor_config(NIGHTLY.gpus_per_training),
        execution_timeout=TUNE.task_timeout,
    )
    def tune(params: dict[str, Any] | None = None, dag_run: DagRunProtocol | None = None) -> dict[str, Any]:
        params = params or {}
        with nightly.skip_when_no_data():
            return tuning.tune_latest(
                load_settings(),
                trials=int(params.get("trials") or TUNE.trials),
                timeout_s=float(params.get("timeout_s") or TUNE.timeout_s),
                window_days=int(params.get("window_days") or TUNE.window_days),
                device=params.get("device") or NIGHTLY.device,
                as_of=dag_run.run_after if dag_run else None,  # a retry searches the same window: resumes its study
            )

    tune()


TUNE_DAG = clickstream_tune()
