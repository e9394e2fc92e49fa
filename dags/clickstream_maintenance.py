"""clickstream_maintenance: weekly upkeep of the lake's Delta tables.

When: every Sunday at 03:00 UTC (`MAINTENANCE.schedule`), one run at a time.
What: `optimize` compacts each table's small files (one commit per table, the rows unchanged), then
`vacuum` deletes the data files that no version of the last `MAINTENANCE.retention_hours` reads
(at least 7 days: `clickstream lake restore` and `train --as-of` reach any version of that week).
The steps are `pipeline.core.maintenance.optimize` and `vacuum`, the same as `clickstream lake optimize|vacuum`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.orchestrate import nightly
from clickstream.pipeline.orchestrate.nightly import MAINTENANCE


@dag(
    dag_id="clickstream_maintenance",
    schedule=MAINTENANCE.schedule,
    start_date=dt.datetime(2014, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=nightly.task_defaults(),
    doc_md=__doc__,
    tags=["clickstream"],
)
def clickstream_maintenance() -> None:
    @task
    def optimize() -> str:
        return nightly.optimize_lake(load_settings())

    @task
    def vacuum() -> str:
        return nightly.vacuum_lake(load_settings(), MAINTENANCE.retention_hours)

    optimize() >> vacuum()


MAINTENANCE_DAG = clickstream_maintenance()
