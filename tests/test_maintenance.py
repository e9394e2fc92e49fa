"""Operating the lake's Delta tables (`clickstream lake ...`): history, restore with what to rebuild,
vacuum that keeps a week of time travel, compaction that keeps the rows, the one-time migration of
a lake in the layout before Delta tables, and an outside Delta reader that sees what the CLI sees."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from lake_content import content_hash

from clickstream.pipeline.core.errors import ClickstreamError, LakeFormatError
from clickstream.pipeline.core.lake import NOTHING, Lake, dates_predicate
from clickstream.pipeline.core.maintenance import history, migrate, optimize, restore, vacuum
from clickstream.pipeline.core.schemas import SCORES

sys.path.insert(0, str(Path(__file__).parent / "hostile"))
from cli_process import run_cli

DAYS = [dt.date(2014, 4, 1) + dt.timedelta(days=offset) for offset in range(3)]


def _scores(day: dt.date, n: int, version: str) -> pl.DataFrame:
    start = dt.datetime.combine(day, dt.time(12), dt.UTC)
    return pl.DataFrame(
        {
            "session_id": [f"{day}-{i}" for i in range(n)],
            "cookie_id": [None] * n,
            "session_start": [start] * n,
            "n_events": [i + 1 for i in range(n)],
            "score": [i / n for i in range(n)],
            "model_name": ["m"] * n,
            "model_version": [version] * n,
            "scored_at": [start] * n,
        },
        schema=SCORES,
    ).with_columns(date=pl.lit(day))


def _score_days(lake: Lake, days: list[dt.date], version: str, n: int = 4) -> int:
    frames = [_scores(day, n, version) for day in days]
    return lake.commit("scores", frames, replace=dates_predicate(days[0], days[-1]), stage="score")


def test_given_commits_then_history_lists_each_with_its_stage_newest_first(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _score_days(lake, DAYS, "1")
    last = _score_days(lake, DAYS[:1], "2")

    listed = history(lake, "scores")
    assert listed["version"].to_list() == list(range(last, -1, -1))
    assert listed["stage"].to_list()[:2] == ["score", "score"]
    assert listed["rows"].to_list()[:2] == [4, 12]
    with pytest.raises(LakeFormatError, match=r"sequences of lake .* has no versions yet"):
        history(lake, "sequences")


def test_given_a_bad_commit_when_restored_then_the_old_rows_are_back_and_the_changed_dates_named(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path / "lake")
    good = _score_days(lake, DAYS, "1")
    before = content_hash(lake.read("scores"))
    _score_days(lake, DAYS[1:2], "2", n=7)  # the bad one touches the middle day only

    summary = restore(lake, "scores", good)

    assert content_hash(lake.read("scores")) == before
    assert summary.changed == (DAYS[1],)
    assert summary.new_version == lake.version("scores") > good
    assert "rebuild downstream: clickstream score --start 2014-04-02 --end 2014-04-02" in str(summary)


def test_given_an_events_restore_then_sequences_are_rebuilt_a_day_either_side(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    write_sequences(lake, synthetic_sequences(sessions=50, days=3, seed=1))
    changed = restore(lake, "sequences", 0)  # back to the empty table
    assert str(changed).endswith(f"clickstream score --start {changed.changed[0]} --end {changed.changed[-1]}")
    assert lake.read("sequences").is_empty()


def test_given_vacuum_then_a_week_of_time_travel_stays_and_a_shorter_retention_is_refused(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    first = _score_days(lake, DAYS, "1")
    _score_days(lake, DAYS, "2")

    summary = vacuum(lake)

    assert summary.counts["scores"] == 0  # the replaced files are younger than a week
    assert set(lake.read("scores", version=first)["model_version"]) == {"1"}
    with pytest.raises(ClickstreamError, match="below the 168 h"):
        vacuum(lake, retention_hours=24)


def test_given_many_small_commits_when_optimized_then_fewer_files_and_the_same_rows(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    for offset in range(4):  # four batches on the same day: four files in one partition
        day = DAYS[0]
        frame = _scores(day, 3, "1").with_columns(pl.col("session_id") + f"-{offset}")
        lake.commit("scores", frame, replace=NOTHING, stage="score")
    before, files_before = content_hash(lake.read("scores")), len(lake.files("scores"))

    summary = optimize(lake)

    assert files_before == 4 and len(lake.files("scores")) == 1
    assert summary.counts["scores"] == 4
    assert content_hash(lake.read("scores")) == before


def _old_layout(root: Path) -> dict[str, int]:
    """A lake as the layout before Delta tables wrote it; returns its rows per table."""
    sequences = synthetic_sequences(sessions=60, days=2, seed=3)
    dated = sequences.with_columns(day=pl.col("session_start").dt.date())
    for (day,), part in dated.partition_by("day", as_dict=True, include_key=False).items():
        folder = root / "sequences" / f"date={day}"
        folder.mkdir(parents=True)
        part.write_parquet(folder / "data.parquet")
    events = pl.DataFrame(
        {
            "session_id": ["1", "1"],
            "cookie_id": [None, None],
            "ts": [dt.datetime(2014, 4, 1, 10, tzinfo=dt.UTC), dt.datetime(2014, 4, 1, 10, 5, tzinfo=dt.UTC)],
            "event_type": ["view", "view"],
            "item_id": ["7", "8"],
            "category": ["0", "0"],
            "price": [None, None],
            "quantity": [None, None],
            "source": ["yoochoose"] * 2,
            "labelled": [True] * 2,
        },
        schema_overrides={"cookie_id": pl.String, "price": pl.Float64, "quantity": pl.Int32},
    )
    (root / "events" / "date=2014-04-01").mkdir(parents=True)
    events.write_parquet(root / "events" / "date=2014-04-01" / "part-0123456789ab.parquet")
    (root / "_locks").mkdir()
    (root / "_locks" / "events-2014-04-01.lock").write_text("host:1")
    return {"sequences": sequences.height, "events": events.height}


def test_given_a_lake_in_the_old_layout_then_commands_say_migrate_and_migrate_converts_it_once(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    rows = _old_layout(root)
    refused = run_cli("sequences", "--lake", str(root), cwd=tmp_path)
    assert refused.code == 2
    assert refused.error_line.endswith("is in the layout before Delta tables; run `clickstream lake migrate`")

    summary = migrate(Lake(root))
    again = migrate(Lake(root))

    lake = Lake(root)
    assert summary.converted == rows and again.converted == {}
    assert lake.read("events")["batch"].unique().to_list() == ["0123456789ab"]
    assert lake.read("sequences").height == rows["sequences"]
    assert not list(root.rglob("data.parquet")) and not list(root.rglob("part-0123456789ab.parquet"))
    assert not (root / "_locks").exists()


def test_given_restore_of_a_version_that_does_not_exist_then_the_cli_says_so_in_one_line(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _score_days(lake, DAYS, "1")

    finished = run_cli("lake", "restore", "scores", "--version", "42", "--lake", lake.root, cwd=tmp_path)
    unknown = run_cli("lake", "history", "nope", "--lake", lake.root, cwd=tmp_path)

    assert finished.code == 2 and finished.error_line == f"error: scores of lake {lake.root} has no version 42"
    assert unknown.code == 2 and "'nope' is not one of" in unknown.error_line


def test_given_scores_then_an_outside_delta_reader_in_a_fresh_process_sees_what_the_cli_shows(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _score_days(lake, DAYS, "1", n=5)
    _score_days(lake, DAYS[-1:], "2", n=6)

    shown = run_cli("scores", "--start", "2014-04-01", "--end", "2014-04-03", "--format", "json", "--lake", lake.root,
                    cwd=tmp_path)
    outside = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import polars as pl
            frame = pl.scan_delta({lake.table_uri("scores")!r}).group_by("date").agg(
                pl.len(), pl.col("score").sum(), pl.col("model_version").max()).sort("date").collect()
            print(frame.write_json())
        """)],
        capture_output=True, text=True, check=True,
    )

    cli = pl.DataFrame(json.loads(shown.stdout)).group_by("date").agg(
        pl.len(), pl.col("score").sum(), pl.col("model_version").max()
    ).sort("date")
    theirs = pl.read_json(outside.stdout.encode()).with_columns(pl.col("date").cast(pl.String))
    assert cli["len"].to_list() == theirs["len"].to_list() == [5, 5, 6]
    assert cli["model_version"].to_list() == theirs["model_version"].to_list() == ["1", "1", "2"]
    assert cli["score"].round(4).to_list() == theirs["score"].round(4).to_list()


def test_given_a_lake_from_before_buckets_then_commands_say_migrate_and_migrate_rewrites_it_into_buckets(
    tmp_path: Path,
) -> None:
    from deltalake import write_deltalake

    sequences = synthetic_sequences(sessions=200, days=3, seed=4)
    expected = write_sequences(Lake(tmp_path / "new"), sequences)
    rows = Lake(tmp_path / "new").read("sequences").drop("bucket")
    old_root = tmp_path / "old"
    write_deltalake(str(old_root / "sequences"), rows.to_arrow(), partition_by=["date"])  # date alone
    lake = Lake(old_root, buckets=3)
    with pytest.raises(LakeFormatError, match="from before session buckets; run `clickstream lake migrate`"):
        lake.read("sequences")

    summary = migrate(lake)

    assert summary.bucketed == {"sequences": 200} and "into 3 session bucket(s)" in str(summary)
    migrated = Lake(old_root)
    assert migrated.buckets == 3 and migrated.dates("sequences") == expected
    after = migrated.read("sequences")
    assert after.get_column("bucket").n_unique() == 3
    key = ["session_id"]
    assert after.drop("bucket").sort(key).equals(rows.sort(key).select(after.drop("bucket").columns))
    assert not (old_root / "_migrating").exists()
    assert migrate(Lake(old_root)).bucketed == {}  # once
