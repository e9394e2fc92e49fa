"""Stage runs at the same time: runs that replace different rows (ingests of different batches for
the same dates, sequences of different date ranges, scores of different dates) both land, and the
lake ends exactly as one run after the other leaves it; of two runs that replace the same rows, the
one that commits first lands and the other fails with a one-line LakeConflictError (exit code 2 from
the CLI) having committed nothing there, so every table holds one run's rows whole.

"At the same time" is made deterministic with real processes (tests/lake_writers.py): the first run
is a child held just before one of its commits, when it has read the table version it builds on and
written its data; the second run goes from start to end meanwhile (another child, this process, or
the CLI); then the first is let go and must reconcile its commit with the second's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import polars as pl
from fixtures import synthetic_sequences, write_sequences
from lake_content import lake_snapshot
from lake_writers import held, run_child, run_stage

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import Lake

START = dt.date(2014, 4, 1)
DAYS = [START + dt.timedelta(days=offset) for offset in range(3)]
TODAY = "2014-04-10"
CONFLICT = "another writer changed the same rows of"


def _logs(folder: Path, seed: int) -> dict[str, object]:
    """Ingest arguments for generated YOOCHOOSE logs of `seed` in `folder` (same file names for every seed)."""
    from clickstream.pipeline.synthetic.generate import generate_logs

    generate_logs(folder, sessions=240, days=len(DAYS), start_date=START, seed=seed)
    return {
        "files": [str(folder / "yoochoose-clicks.dat")],
        "buys": [str(folder / "yoochoose-buys.dat")],
        "ingestion_date": TODAY,
    }


def _elsewhere(settings: Settings, tmp_path: Path, name: str, copy: bool = False) -> Settings:
    """`settings` on another lake under tmp_path: empty, or a copy of the lake as it is now."""
    other = dataclasses.replace(settings, lake=str(tmp_path / name))
    if copy:
        shutil.copytree(settings.lake, other.lake)
    return other


def _scored_lake(settings: Settings) -> None:
    frame = synthetic_sequences(sessions=300, days=len(DAYS), start_date=START, seed=6)
    write_sequences(Lake(settings.lake), frame.with_columns(cookie_id=pl.format("c{}", pl.int_range(300) % 40)))


def _batches_per_date(settings: Settings) -> dict[dt.date, int]:
    counts = Lake(settings.lake).read("events").group_by("date").agg(pl.col("batch").n_unique())
    return dict(counts.iter_rows())


# ---- different rows: both land ------------------------------------------------------


def test_given_ingests_of_two_batches_for_the_same_dates_at_once_then_both_land_as_a_sequential_run_would(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for args in (_logs(first, seed=1), _logs(second, seed=2)):
        run_stage("ingest", settings, **args)
    # both batches re-delivered with other rows: each run replaces its own batch's files on the same dates
    again_first, again_second = _logs(first, seed=3), _logs(second, seed=4)

    with held(
        settings.lake, moment="commit", table="events", stage="ingest", home=settings.home, **again_first
    ) as child:
        other = run_child(settings.lake, stage="ingest", home=settings.home, **again_second)
        done = child.resume()

    assert (other.code, done.code) == (0, 0), other.stderr[-3000:] + done.stderr[-3000:]
    sequential = _elsewhere(settings, tmp_path, "sequential")
    run_stage("ingest", sequential, **again_first)
    run_stage("ingest", sequential, **again_second)
    assert lake_snapshot(settings.lake) == lake_snapshot(sequential.lake)
    assert _batches_per_date(settings) == dict.fromkeys(DAYS, 2)


def test_given_sequences_of_two_date_ranges_built_at_once_then_both_land_as_one_build_would(
    settings: Settings, tmp_path: Path
) -> None:
    run_stage("ingest", settings, **_logs(tmp_path / "first", seed=1))
    run_stage("sequences", settings)
    run_stage("ingest", settings, **_logs(tmp_path / "second", seed=2))  # more sessions on every date
    whole = _elsewhere(settings, tmp_path, "whole", copy=True)

    with held(
        settings.lake, moment="commit", table="sequences", stage="sequences", start=str(DAYS[0]), end=str(DAYS[0])
    ) as child:
        other = run_child(settings.lake, stage="sequences", start=str(DAYS[1]), end=str(DAYS[-1]))
        done = child.resume()

    assert (other.code, done.code) == (0, 0), other.stderr[-3000:] + done.stderr[-3000:]
    run_stage("sequences", whole)
    assert lake_snapshot(settings.lake) == lake_snapshot(whole.lake)
    assert Lake(settings.lake).dates("sequences") == DAYS
    builds = [c for c in Lake(settings.lake).history("sequences") if c.stage == "sequences"]
    assert [(c.metadata["first_date"], c.metadata["last_date"]) for c in builds[:2]] == [
        (str(DAYS[0]), str(DAYS[0])),  # newest first: the held build committed last
        (str(DAYS[1]), str(DAYS[-1])),
    ]


def test_given_scoring_of_two_dates_at_once_then_both_land_as_a_sequential_run_would(
    settings: Settings, tmp_path: Path
) -> None:
    _scored_lake(settings)
    run_stage("score", settings, version="1", days=[str(day) for day in DAYS])
    sequential = _elsewhere(settings, tmp_path, "sequential", copy=True)

    with held(settings.lake, moment="commit", table="scores", stage="score", version="2", days=[str(DAYS[0])]) as child:
        other = run_child(settings.lake, stage="score", version="3", days=[str(DAYS[-1])])
        done = child.resume()

    assert (other.code, done.code) == (0, 0), other.stderr[-3000:] + done.stderr[-3000:]
    run_stage("score", sequential, version="2", days=[str(DAYS[0])])
    run_stage("score", sequential, version="3", days=[str(DAYS[-1])])
    snapshot = lake_snapshot(settings.lake)
    assert snapshot == lake_snapshot(sequential.lake)  # cookie_intent too: rebuilt from both runs' scores
    versions = Lake(settings.lake).read("scores").group_by("date").agg(pl.col("model_version").unique()).sort("date")
    assert versions.rows() == [(DAYS[0], ["2"]), (DAYS[1], ["1"]), (DAYS[2], ["3"])]
    assert any(key.startswith("cookie_intent/") for key in snapshot)


def test_given_scoring_of_two_dates_when_the_first_rebuilds_cookie_intent_last_then_it_still_counts_both_dates(
    settings: Settings, tmp_path: Path
) -> None:
    _scored_lake(settings)
    sequential = _elsewhere(settings, tmp_path, "sequential", copy=True)

    # the first run has committed its scores and not yet rebuilt cookie_intent from them
    with held(settings.lake, moment="after", table="scores", stage="score", version="1", days=[str(DAYS[0])]) as child:
        other = run_child(settings.lake, stage="score", version="1", days=[str(DAYS[-1])])
        done = child.resume()

    assert (other.code, done.code) == (0, 0), other.stderr[-3000:] + done.stderr[-3000:]
    run_stage("score", sequential, version="1", days=[str(DAYS[0])])
    run_stage("score", sequential, version="1", days=[str(DAYS[-1])])
    assert lake_snapshot(settings.lake) == lake_snapshot(sequential.lake)


def test_given_two_buckets_scored_at_once_then_both_land_and_cookie_intent_counts_both(
    settings: Settings, tmp_path: Path
) -> None:
    frame = synthetic_sequences(sessions=300, days=len(DAYS), start_date=START, seed=6)
    write_sequences(
        Lake(settings.lake, buckets=2), frame.with_columns(cookie_id=pl.format("c{}", pl.int_range(300) % 40))
    )
    at_once = _elsewhere(settings, tmp_path, "at-once", copy=True)
    days = [str(day) for day in DAYS]

    # bucket 0 has committed its scores and not yet updated its cookies when bucket 1 scores
    with held(settings.lake, moment="after", table="scores", stage="score", version="1", days=days, bucket=0) as child:
        other = run_child(settings.lake, stage="score", version="1", days=days, bucket=1)
        done = child.resume()

    assert (other.code, done.code) == (0, 0), other.stderr[-3000:] + done.stderr[-3000:]
    run_stage("score", at_once, version="1", days=days)  # every bucket in one run

    def rows(root: str, table: str) -> pl.DataFrame:
        return Lake(root).read(table).drop("scored_at", strict=False).sort("bucket", "date", pl.all())

    for table in ("scores", "cookie_intent"):
        assert rows(settings.lake, table).equals(rows(at_once.lake, table)), table
    assert rows(settings.lake, "cookie_intent").height == 40
    assert Lake(settings.lake).read("scores").get_column("bucket").unique().sort().to_list() == [0, 1]


# ---- the same rows: one lands, the other fails whole ------------------------------------


def test_given_an_ingest_held_at_its_commit_when_the_same_batch_is_ingested_meanwhile_then_it_fails_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    args = _logs(raw, seed=1)

    with held(settings.lake, moment="commit", table="events", stage="ingest", home=settings.home, **args) as child:
        _logs(raw, seed=2)  # the same files (the same batch) with other rows, read by the second run only
        run_stage("ingest", settings, **args)
        landed = lake_snapshot(settings.lake)
        done = child.resume()

    assert done.code == 2
    assert done.error_line.startswith("LakeConflictError: ingest: ") and f"{CONFLICT} events" in done.error_line
    assert lake_snapshot(settings.lake) == landed  # the held run committed nothing to events
    alone = _elsewhere(settings, tmp_path, "alone")
    run_stage("ingest", alone, **args)
    assert lake_snapshot(settings.lake) == lake_snapshot(alone.lake)  # the second run's input, whole


def test_given_a_sequences_build_held_at_its_commit_when_another_build_lands_then_the_cli_exits_2_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    run_stage("ingest", settings, **_logs(tmp_path / "first", seed=1))

    with held(settings.lake, moment="commit", table="sequences", cli=["sequences", "--lake", settings.lake]) as child:
        run_stage("ingest", settings, **_logs(tmp_path / "second", seed=2))  # more sessions on every date
        run_stage("sequences", settings)
        landed = lake_snapshot(settings.lake)
        done = child.resume()

    assert done.code == 2
    assert CONFLICT in done.error_line and "sequences" in done.error_line
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert lake_snapshot(settings.lake) == landed  # the held build committed nothing
    run_stage("sequences", settings)
    assert lake_snapshot(settings.lake) == landed  # what the build that landed wrote is what a build writes


def test_given_scoring_held_at_its_commit_when_another_run_scores_the_same_dates_then_it_fails_and_scores_are_whole(
    settings: Settings, tmp_path: Path
) -> None:
    _scored_lake(settings)
    alone = _elsewhere(settings, tmp_path, "alone", copy=True)
    days = [str(day) for day in DAYS[:2]]

    with held(settings.lake, moment="commit", table="scores", stage="score", version="1", days=days) as child:
        run_stage("score", settings, version="2", days=days)
        done = child.resume()

    assert done.code == 2
    assert done.error_line.startswith("LakeConflictError: score: ") and f"{CONFLICT} scores" in done.error_line
    scores = Lake(settings.lake).read("scores")
    assert scores.group_by("date").agg(pl.col("model_version").unique()).sort("date").rows() == [
        (DAYS[0], ["2"]),
        (DAYS[1], ["2"]),
    ]
    run_stage("score", alone, version="2", days=days)
    assert lake_snapshot(settings.lake) == lake_snapshot(alone.lake)  # cookie_intent from version 2 alone, too
