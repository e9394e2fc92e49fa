"""A stage killed with SIGKILL at any of its writes leaves every file whole (the previous
good one or the new one), the killed write's temporary file is never read, and the next
run takes over the dead writer's locks and ends exactly where a clean run ends.

Each case is a real child process (tests/killpoints.py) that kills itself just before or
just after one rename into the lake (or the report's folder): every commit point of
ingest, sequences, score and report, both sides of each rename. The previous content
always differs from the new content, so "old or new" is a real check, not a tautology.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from killpoints import MOMENTS, kill_at, recorded_commits, run_stage
from lake_content import lake_snapshot, temporary_files

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import TABLES, Lake
from clickstream.pipeline.synthetic.generate import generate_logs

START = dt.date(2014, 4, 1)
DAYS = 3
INGESTION_DATE = "2014-04-10"
# commits of one clean run: ingest = quarantine + 3 event dates; sequences = 3 dates;
# score = 3 dates + cookie_intent; report = the HTML file
COMMITS = {"ingest": 4, "sequences": 3, "score": 4, "report": 1}


def _raw_logs(folder: Path, seed: int) -> dict[str, list[str]]:
    """Generated YOOCHOOSE logs of `seed` (same file names for every seed) plus one bad click line."""
    generate_logs(folder, sessions=240, days=DAYS, start_date=START, seed=seed)
    clicks, buys = folder / "yoochoose-clicks.dat", folder / "yoochoose-buys.dat"
    with clicks.open("a") as handle:
        handle.write(f"{seed},not-a-time,1,0\n")
    return {"files": [str(clicks)], "buys": [str(buys)]}


def _ingest_args(raw: dict[str, list[str]]) -> dict[str, object]:
    return {**raw, "ingestion_date": INGESTION_DATE}


def _assert_survives(stage: str, settings: Settings, tmp_path: Path, nth: int, moment: str, **args: object) -> None:
    """Kill `stage` at its nth commit; check the lake file by file, then re-run it to the end."""
    root = Path(settings.lake)
    old = lake_snapshot(root)
    clean = dataclasses.replace(settings, lake=str(tmp_path / "clean-lake"))
    shutil.copytree(root, clean.lake)
    with recorded_commits(clean.lake) as commits:
        run_stage(stage, clean, **args)
    new = lake_snapshot(clean.lake)
    points = [str(Path(target).relative_to(clean.lake)) for target in commits]
    assert len(points) == COMMITS[stage], points
    assert all(old.get(point) != new[point] for point in points if not point.startswith("cookie_intent"))

    hit = str(Path(kill_at(stage, settings, nth, moment, [settings.lake], **args)).relative_to(root))

    after = lake_snapshot(root)
    assert hit == points[nth - 1]
    for path in old.keys() | new.keys() | after.keys():
        assert after.get(path) in {old.get(path), new.get(path)}, f"{path} is neither the previous nor the new file"
    finished = points[: nth - 1] if moment == "before" else points[:nth]
    assert all(after[point] == new[point] for point in finished)
    if moment == "before":
        assert after.get(hit) == old.get(hit)
        assert [Path(t).name.split(".tmp-")[0] for t in temporary_files(root)] == [Path(hit).name]
    _assert_scans_read_committed_files_only(Lake(settings.lake))

    run_stage(stage, settings, **args)
    assert lake_snapshot(root) == new
    assert not list((root / "_locks").iterdir())  # the dead writer's locks were taken over and released
    assert not list(Path(settings.home).glob("staging/*"))  # and a killed ingest's staging folder removed


def _assert_scans_read_committed_files_only(lake: Lake) -> None:
    for table in TABLES:
        committed = sum(pl.read_parquet(p).height for p in Path(lake.table_dir(table)).glob("date=*/*.parquet"))
        scan = lake.scan(table)
        assert (0 if scan is None else scan.collect().height) == committed, table


def _points(stage: str) -> list[tuple[int, str]]:
    return [(nth, moment) for nth in range(1, COMMITS[stage] + 1) for moment in MOMENTS]


@pytest.mark.parametrize(("nth", "moment"), _points("ingest"))
def test_given_an_ingest_killed_at_a_commit_then_each_file_is_whole_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    raw = tmp_path / "raw"
    run_stage("ingest", settings, **_ingest_args(_raw_logs(raw, seed=1)))

    _assert_survives("ingest", settings, tmp_path, nth, moment, **_ingest_args(_raw_logs(raw, seed=2)))


@pytest.mark.parametrize(("nth", "moment"), _points("sequences"))
def test_given_sequences_killed_at_a_commit_then_each_partition_is_whole_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    run_stage("ingest", settings, **_ingest_args(_raw_logs(tmp_path / "first", seed=1)))
    run_stage("sequences", settings)
    run_stage("ingest", settings, **_ingest_args(_raw_logs(tmp_path / "second", seed=2)))  # more sessions a day

    _assert_survives("sequences", settings, tmp_path, nth, moment)


@pytest.mark.parametrize(("nth", "moment"), _points("score"))
def test_given_scoring_killed_at_a_commit_then_each_partition_is_whole_and_the_rerun_ends_like_a_clean_run(
    settings: Settings, tmp_path: Path, nth: int, moment: str
) -> None:
    frame = synthetic_sequences(sessions=300, days=DAYS, start_date=START, seed=3)
    write_sequences(Lake(settings.lake), frame.with_columns(cookie_id=pl.format("c{}", pl.int_range(300) % 40)))
    run_stage("score", settings, version="1")

    _assert_survives("score", settings, tmp_path, nth, moment, version="2")


@pytest.mark.slow  # the child imports MLflow and matplotlib: ~10 s on a busy 2-core machine
@pytest.mark.parametrize("moment", MOMENTS)
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
        assert len(temporary_files(out.parent)) == 1
    else:
        assert _undated(out.read_text()) == _undated(reference.read_text())
    run_stage("report", settings, out=str(out))
    assert _undated(out.read_text()) == _undated(reference.read_text())


def _undated(document: str) -> str:
    """The report without its generation time (minutes), the only part that varies between runs."""
    return re.sub(r"generated \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "generated", document)
