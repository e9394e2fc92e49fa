"""Re-running a stage for the same dates leaves the same content: the content hash of every date
of every table (its rows as a multiset, `scored_at` aside) is unchanged, keys stay unique, and a
re-trained window re-uses its registered version instead of adding a duplicate. A re-run is not
skipped: it commits a new version of each table it writes (one commit per table), whose rows
replace exactly the previous run's. The whole nightly DAG day is covered in tests/test_dags.py;
here the stage functions are chained directly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from fixtures import tiny_settings
from killpoints import recorded_commits, run_stage
from lake_content import lake_snapshot
from table_dates import table_contents

from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.lake import TABLES, Lake
from clickstream.pipeline.ingest.ingest import batch_id, ingest_files
from clickstream.pipeline.synthetic.generate import generate_logs

START = dt.date(2014, 4, 1)
TODAY = dt.date(2014, 4, 10)


def _logs(folder: Path, sessions: int = 300, days: int = 3) -> tuple[Path, Path]:
    generate_logs(folder, sessions=sessions, days=days, start_date=START, seed=5)
    return folder / "yoochoose-clicks.dat", folder / "yoochoose-buys.dat"


def _assert_unique_keys(lake: Lake) -> None:
    """No duplicate rows: events are distinct, sessions and scores have one row per session_id."""
    events = lake.scan("events").collect()
    assert events.is_duplicated().sum() == 0
    for table in ("sequences", "scores"):
        scan = lake.scan(table)
        if scan is not None:
            assert scan.select(pl.col("session_id").is_duplicated().sum()).collect().item() == 0, table


def _versions(lake: Lake) -> dict[str, int | None]:
    return {table: lake.version(table) for table in TABLES}


def test_given_a_lake_built_from_logs_when_ingest_sequences_and_score_rerun_then_every_partition_is_unchanged(
    settings: Settings, tmp_path: Path
) -> None:
    clicks, buys = _logs(tmp_path / "raw")
    args = {"files": [str(clicks)], "buys": [str(buys)], "ingestion_date": TODAY.isoformat()}
    stages = [("ingest", args), ("sequences", {}), ("score", {"version": "1"})]
    for stage, stage_args in stages:
        run_stage(stage, settings, **stage_args)
    lake = Lake(settings.lake)
    first, contents, versions = lake_snapshot(settings.lake), table_contents(settings.lake), _versions(lake)

    with recorded_commits(settings.lake) as commits:
        for stage, stage_args in stages:
            run_stage(stage, settings, **stage_args)

    assert lake_snapshot(settings.lake) == first
    assert table_contents(settings.lake) == contents
    # YOOCHOOSE has no cookies: cookie_intent has nothing to update (no commit), quarantine no bad row
    assert {table for table, _ in contents} == {"events", "sequences", "scores"}
    rewritten = [Path(target).name for target in commits]
    assert rewritten == ["quarantine", "events", "sequences", "scores"]
    assert versions["cookie_intent"] is None  # never written
    assert _versions(lake) == {t: None if v is None else v + rewritten.count(t) for t, v in versions.items()}
    _assert_unique_keys(lake)


def test_given_the_same_logs_listed_in_another_order_when_ingested_again_then_one_batch_and_the_same_partitions(
    settings: Settings, tmp_path: Path
) -> None:
    first_clicks, buys = _logs(tmp_path / "a")
    second_clicks = tmp_path / "b" / "clicks.dat"
    second_clicks.parent.mkdir()
    second_clicks.write_bytes(first_clicks.read_bytes())  # the same rows in two files: duplicates
    ingest_files(settings, "yoochoose", [first_clicks, second_clicks], [buys], ingestion_date=TODAY)
    first, contents = lake_snapshot(settings.lake), table_contents(settings.lake)

    summary = ingest_files(settings, "yoochoose", [second_clicks, first_clicks], [buys], ingestion_date=TODAY)

    assert summary.batch == batch_id("yoochoose", [first_clicks, second_clicks], [buys])
    assert lake_snapshot(settings.lake) == first
    assert table_contents(settings.lake) == contents
    assert Lake(settings.lake).read("events").get_column("batch").unique().to_list() == [summary.batch]
    assert summary.duplicates > 0
    assert summary.rows_read == summary.rows_written + summary.quarantined + summary.duplicates
    _assert_unique_keys(Lake(settings.lake))


@pytest.mark.slow  # trains a tiny LSTM and a LightGBM baseline, and loads the model to score: ~30 s
def test_given_the_whole_chain_run_twice_then_partitions_are_equal_and_no_model_version_is_duplicated(
    settings: Settings, tmp_path: Path
) -> None:
    from clickstream.models.registry.store import alias_version, tracking_client
    from clickstream.models.training.train import train_and_register
    from clickstream.pipeline.serve.scoring import score_dates

    tiny = tiny_settings(settings, epochs=1, validation_days=1)
    clicks, buys = _logs(tmp_path / "raw", sessions=1500, days=4)

    def chain() -> tuple[tuple[object, object], bool]:
        run_stage("ingest", tiny, files=[str(clicks)], buys=[str(buys)], ingestion_date=TODAY.isoformat())
        run_stage("sequences", tiny)
        trained = train_and_register(tiny, None, None, device="cpu", promote=True)
        score_dates(tiny, START, START + dt.timedelta(days=3))
        return (lake_snapshot(tiny.lake), table_contents(tiny.lake)), trained.reused

    first, first_reused = chain()
    versions = tracking_client(tiny).search_model_versions(f"name='{tiny.model_name}'")
    champion = alias_version(tiny, CHAMPION)

    second, second_reused = chain()

    assert second == first  # scores equal except scored_at, which the hash leaves out
    assert (first_reused, second_reused) == (False, True)
    assert len(tracking_client(tiny).search_model_versions(f"name='{tiny.model_name}'")) == len(versions) == 1
    assert alias_version(tiny, CHAMPION) == champion == "1"
    scores = Lake(tiny.lake).scan("scores").collect()
    assert scores["model_version"].unique().to_list() == ["1"]
    _assert_unique_keys(Lake(tiny.lake))
