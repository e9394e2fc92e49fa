"""Two runs for the same date cannot interleave their writes: the second one is refused with a
one-line LockedError naming the holder, before it changes anything; other dates go on; and
a lock left by a run killed with SIGKILL is taken over by the next run.

The first run is a real child process (tests/killpoints.py) held just before one of its
commits, with the stage's own lock taken; the second is this process or the real CLI.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from killpoints import DEADLINE_S, StandInScorer, kill_at, paused_at, run_stage
from lake_content import lake_snapshot

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LockedError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.scoring import score_with
from clickstream.pipeline.synthetic.generate import generate_logs

START = dt.date(2014, 4, 1)
TODAY = "2014-04-10"


def _ingested(settings: Settings, folder: Path, seed: int) -> dict[str, object]:
    """Ingest generated logs of `seed` from `folder`; returns the ingest arguments."""
    generate_logs(folder, sessions=240, days=3, start_date=START, seed=seed)
    args = {"files": [str(folder / "yoochoose-clicks.dat")], "buys": [str(folder / "yoochoose-buys.dat")]}
    run_stage("ingest", settings, **args, ingestion_date=TODAY)
    return {**args, "ingestion_date": TODAY}


def _holder(child: subprocess.Popen[str]) -> str:
    return f"{socket.gethostname()}:{child.pid}"


def test_given_a_sequences_build_holding_its_lock_when_the_cli_builds_too_then_it_exits_2_in_one_line_writing_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    _ingested(settings, tmp_path / "raw", seed=1)
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"

    with paused_at("sequences", settings, 1, [settings.lake]) as (child, _):
        before = lake_snapshot(settings.lake)
        second = subprocess.run(
            [sys.executable, "-c", code, "sequences", "--lake", settings.lake],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert f"sequences-all.lock is held by process {_holder(child)}" in second.stderr
        assert "Traceback" not in second.stderr
        assert lake_snapshot(settings.lake) == before

    built = lake_snapshot(settings.lake)
    run_stage("sequences", settings)  # the child's result is exactly what one run alone writes
    assert lake_snapshot(settings.lake) == built
    assert any(path.startswith("sequences/") for path in built)


def test_given_scoring_holding_a_date_when_another_run_scores_that_date_then_it_is_refused_and_other_dates_go_on(
    settings: Settings,
) -> None:
    days = write_sequences(Lake(settings.lake), synthetic_sequences(sessions=300, days=3, start_date=START, seed=6))

    with paused_at("score", settings, 1, [settings.lake], version="1") as (child, target):
        assert f"date={days[0]}" in target
        with pytest.raises(LockedError, match=f"scores-{days[0]}.lock is held by process {_holder(child)}$"):
            score_with(settings, StandInScorer("2"), [days[0]])
        assert not Path(target).exists()  # the refused run wrote nothing there
        score_with(settings, StandInScorer("2"), [days[-1]])  # another date is not blocked

    scores = Lake(settings.lake).scan("scores").collect()
    versions = scores.group_by("date").agg(pl.col("model_version").unique()).sort("date")
    assert versions["model_version"].to_list() == [["1"]] * len(days)  # one writer per partition, last one wins
    assert scores["session_id"].is_duplicated().sum() == 0


def test_given_an_ingest_holding_a_date_when_the_same_batch_is_ingested_again_then_it_is_refused_until_done(
    settings: Settings, tmp_path: Path
) -> None:
    args = _ingested(settings, tmp_path / "raw", seed=1)
    generate_logs(tmp_path / "raw", sessions=240, days=3, start_date=START, seed=2)  # changed input, same batch

    with paused_at("ingest", settings, 1, [settings.lake], **args) as (child, target):
        assert target.rsplit("/", 2)[-2] == f"date={START}"
        with pytest.raises(LockedError, match=f"events-{START}.lock is held by process {_holder(child)}$"):
            run_stage("ingest", settings, **args)

    finished = lake_snapshot(settings.lake)
    run_stage("ingest", settings, **args)
    assert lake_snapshot(settings.lake) == finished


def test_given_a_sequences_build_killed_holding_its_lock_then_the_next_build_takes_the_stale_lock_over(
    settings: Settings, tmp_path: Path
) -> None:
    _ingested(settings, tmp_path / "raw", seed=1)
    lock = Path(settings.lake) / "_locks" / "sequences-all.lock"

    kill_at("sequences", settings, 1, "before", [settings.lake])

    holder = lock.read_text()
    assert holder.startswith(f"{socket.gethostname()}:")
    run_stage("sequences", settings)
    assert not lock.exists()
    assert Lake(settings.lake).dates("sequences") == Lake(settings.lake).dates("events")
