"""A stage killed with SIGKILL at any instant leaves every table readable and each of its tables
wholly at its previous version or wholly at the new one (every date of the table old, or every
date new: one ingest's dates never mix two deliveries), and the next run ends exactly where a
clean run ends.

Each case is a real child process (tests/killpoints.py). The kill points are a stage's table
commits (ingest: quarantine then events; sequences: sequences; score: scores then cookie_intent),
each killed just before the commit call, while delta-rs writes its data files, and just after the
commit; the report (a plain file) just before and after its rename. On top of those, an ingest of
a re-delivered, changed multi-date file is killed at random instants of its run. The previous
content always differs from the new content on every date, so "old or new" is a real check, not
a tautology.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from killpoints import DEADLINE_S, FILE_MOMENTS, MOMENTS, kill_at, recorded_commits, run_stage, running
from lake_content import lake_snapshot
from table_dates import assert_readable, of_table, side, table_contents

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import TABLES, Lake
from clickstream.pipeline.synthetic.generate import generate_logs

START = dt.date(2014, 4, 1)
DAYS = 3
INGESTION_DATE = "2014-04-10"
# the table commits of one run, in order
COMMITS = {"ingest": ("quarantine", "events"), "sequences": ("sequences",), "score": ("scores", "cookie_intent")}
KILLS = 8  # random instants of the kill -9 loop
SEED = 20140401


def _raw_logs(folder: Path, seed: int, sessions: int = 240, days: int = DAYS) -> dict[str, list[str]]:
    """Generated YOOCHOOSE logs of `seed` (same file names for every seed) plus one bad click line."""
    generate_logs(folder, sessions=sessions, days=days, start_date=START, seed=seed)
    clicks, buys = folder / "yoochoose-clicks.dat", folder / "yoochoose-buys.dat"
    with clicks.open("a") as handle:
        handle.write(f"{seed},not-a-time,1,0\n")
    return {"files": [str(clicks)], "buys": [str(buys)]}


def _ingest_args(raw: dict[str, list[str]]) -> dict[str, object]:
    return {**raw, "ingestion_date": INGESTION_DATE}


def _clean_copy(settings: Settings, tmp_path: Path) -> Settings:
    """`settings` on a copy of its lake, for the clean run the killed one is measured against."""
    clean = dataclasses.replace(settings, lake=str(tmp_path / "clean-lake"))
    shutil.copytree(settings.lake, clean.lake)
    return clean


def _assert_survives(stage: str, settings: Settings, tmp_path: Path, nth: int, moment: str, **args: object) -> None:
    """Kill `stage` at `moment` of its nth commit; check the lake table by table and date by date,
    then re-run the stage to the end."""
    lake = Lake(settings.lake)
    old, versions = table_contents(settings.lake), {table: lake.version(table) for table in TABLES}
    clean = _clean_copy(settings, tmp_path)
    with recorded_commits(clean.lake) as commits:
        run_stage(stage, clean, **args)
    new = table_contents(clean.lake)
    assert [Path(target).name for target in commits] == list(COMMITS[stage])
    assert all(versions[table] is not None for table in COMMITS[stage])  # each run is one commit per table

    hit = kill_at(stage, settings, nth, moment, [settings.lake], **args)

    assert hit == lake.table_uri(COMMITS[stage][nth - 1])
    assert_readable(settings.lake)
    after = table_contents(settings.lake)
    landed = COMMITS[stage][: nth if moment == "after" else nth - 1]
    for table in TABLES:
        if table in COMMITS[stage]:
            assert side(after, old, new, table) == ("new" if table in landed else "old"), table
        else:
            assert of_table(after, table) == of_table(old, table), table
        assert lake.version(table) == (versions[table] + 1 if table in landed else versions[table]), table

    run_stage(stage, settings, **args)
    assert table_contents(settings.lake) == new
    assert lake_snapshot(settings.lake) == lake_snapshot(clean.lake)


def _points(stage: str) -> list[tuple[int, str]]:
    return [(nth, moment) for nth in range(1, len(COMMITS[stage]) + 1) for moment in MOMENTS]


@pytest.mark.parametrize(("nth", "moment"), _points("ingest"))
def test_given_an_ingest_killed_at_a_commit_then_each_table_is_wholly_old_or_new_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    raw = tmp_path / "raw"
    run_stage("ingest", settings, **_ingest_args(_raw_logs(raw, seed=1)))

    # the same files changed: the same batch, re-delivered, replaces its rows of every date
    _assert_survives("ingest", settings, tmp_path, nth, moment, **_ingest_args(_raw_logs(raw, seed=2)))


@pytest.mark.parametrize(("nth", "moment"), _points("sequences"))
def test_given_sequences_killed_at_its_commit_then_every_date_is_wholly_old_or_new_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    run_stage("ingest", settings, **_ingest_args(_raw_logs(tmp_path / "first", seed=1)))
    run_stage("sequences", settings)
    run_stage("ingest", settings, **_ingest_args(_raw_logs(tmp_path / "second", seed=2)))  # more sessions a day

    _assert_survives("sequences", settings, tmp_path, nth, moment)


@pytest.mark.parametrize(("nth", "moment"), _points("score"))
def test_given_scoring_killed_at_a_commit_then_each_table_is_wholly_old_or_new_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    frame = synthetic_sequences(sessions=300, days=DAYS, start_date=START, seed=3)
    write_sequences(Lake(settings.lake), frame.with_columns(cookie_id=pl.format("c{}", pl.int_range(300) % 40)))
    run_stage("score", settings, version="1")

    _assert_survives("score", settings, tmp_path, nth, moment, version="2")


def test_given_a_redelivered_file_ingest_killed_at_random_instants_then_its_dates_are_all_old_or_all_new(
    settings: Settings, tmp_path: Path
) -> None:
    """kill -9 at random instants of an ingest of a multi-date file re-delivered, changed, at the same
    path (the same batch, so the new rows replace the old ones on every date): after each kill
    every date of events is the old content or the new, and all of them agree; the re-run after
    the last kill ends like a clean run. A kill that came after the events commit leaves nothing
    more to learn from that lake: the next kill starts again from the old one; one that came
    before leaves its debris (unreferenced data files) for the next run to write over."""
    raw = tmp_path / "raw"
    run_stage("ingest", settings, **_ingest_args(_raw_logs(raw, seed=1, sessions=3000, days=4)))
    args = _ingest_args(_raw_logs(raw, seed=2, sessions=3000, days=4))
    old = table_contents(settings.lake)
    previous = tmp_path / "previous-lake"
    shutil.copytree(settings.lake, previous)
    clean = _clean_copy(settings, tmp_path)
    with running("ingest", clean, **args) as child:
        began = time.perf_counter()
        assert child.wait(DEADLINE_S) == 0
        duration = time.perf_counter() - began
    new = table_contents(clean.lake)
    assert len(of_table(new, "events")) >= 4  # a multi-date file (sessions past midnight: a day more)

    outcomes = []
    rng = random.Random(SEED)
    for instant in [rng.uniform(0, duration) for _ in range(KILLS)]:
        with running("ingest", settings, **args) as child:
            time.sleep(instant)
            child.kill()  # whatever point it reached; a no-op if it already finished
            code = child.wait(DEADLINE_S)
        assert_readable(settings.lake)
        after = table_contents(settings.lake)
        sides = {table: side(after, old, new, table) for table in COMMITS["ingest"]}
        outcomes.append((round(instant, 3), code, sides))
        assert sides["events"] == "old" or sides["quarantine"] == "new", outcomes  # quarantine commits first
        assert {key: digest for key, digest in after.items() if key[0] not in COMMITS["ingest"]} == {}, outcomes
        if sides["events"] == "new":
            shutil.rmtree(settings.lake)
            shutil.copytree(previous, settings.lake)

    print(f"clean run {duration:.3f} s; kills (instant, exit code, sides): {outcomes}")
    run_stage("ingest", settings, **args)
    assert table_contents(settings.lake) == new, outcomes
    assert lake_snapshot(settings.lake) == lake_snapshot(clean.lake)


@pytest.mark.slow  # the child imports MLflow and matplotlib: ~10 s on a busy 2-core machine
@pytest.mark.parametrize("moment", FILE_MOMENTS)
def test_given_the_report_killed_at_its_write_then_the_previous_report_or_the_whole_new_one_is_there(
    settings: Settings, tmp_path: Path, moment: str
) -> None:
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=300, days=DAYS, start_date=START, seed=4))
    out, reference = tmp_path / "out" / "report.html", tmp_path / "reference" / "report.html"
    out.parent.mkdir()
    reference.parent.mkdir()
    run_stage("score", settings, version="1")
    run_stage("report", settings, out=str(out))
    previous = out.read_text()
    run_stage("score", settings, version="2")
    with recorded_commits(reference.parent) as commits:
        run_stage("report", settings, out=str(reference))
    assert commits == [str(reference)] and _undated(reference.read_text()) != _undated(previous)

    hit = kill_at("report", settings, 1, moment, [str(out.parent)], out=str(out))

    assert hit == str(out)
    if moment == "before":
        assert out.read_text() == previous
        assert len(list(out.parent.glob(".report.html.tmp-*"))) == 1  # the complete temporary, never renamed
    else:
        assert _undated(out.read_text()) == _undated(reference.read_text())
    run_stage("report", settings, out=str(out))
    assert _undated(out.read_text()) == _undated(reference.read_text())


def _undated(document: str) -> str:
    """The report without its generation time (minutes), the only part that varies between runs."""
    return re.sub(r"generated \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "generated", document)
