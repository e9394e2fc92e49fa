"""`--out` writes one analyst file atomically, never a folder and never inside the lake, whose
files only the pipeline writes (overwriting a partition would break every later read)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from cli_process import run_cli
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.serve.output import FORMATS, write_output

FRAME = pl.DataFrame({"session_id": ["s1", "s2"], "score": [0.25, 0.75]})


@pytest.fixture
def lake(settings: Settings) -> Lake:
    lake = Lake(settings.lake)
    write_sequences(lake, synthetic_sequences(sessions=40, days=1))
    return lake


def _refused(out: Path, settings: Settings, fragment: str) -> None:
    for fmt in FORMATS:
        with pytest.raises(ClickstreamError, match=fragment) as error:
            write_output(FRAME, fmt, out, lake=settings.lake)
        assert "\n" not in str(error.value) and str(out) in str(error.value)


def test_given_a_partition_file_as_out_then_refused_and_the_partition_is_unchanged(
    settings: Settings, lake: Lake
) -> None:
    partition = Path(lake.files("sequences")[0])
    before = partition.read_bytes()

    _refused(partition, settings, "inside the lake")

    assert partition.read_bytes() == before
    assert sorted(p.name for p in partition.parent.iterdir()) == [partition.name]  # no temporary left


@pytest.mark.parametrize("inside", [".", "events/new.csv", "scores/date=2014-04-01/data.parquet", "x/../y.json"])
def test_given_any_path_inside_the_lake_then_refused(settings: Settings, lake: Lake, inside: str) -> None:
    _refused(Path(settings.lake) / inside, settings, "inside the lake")


def test_given_a_link_leading_into_the_lake_then_refused(settings: Settings, lake: Lake, tmp_path: Path) -> None:
    link = tmp_path / "innocent.parquet"
    link.symlink_to(lake.files("sequences")[0])
    folder_link = tmp_path / "reports"
    folder_link.symlink_to(settings.lake, target_is_directory=True)

    _refused(link, settings, "inside the lake")
    _refused(folder_link / "out.csv", settings, "inside the lake")


def test_given_a_folder_as_out_then_refused(settings: Settings, tmp_path: Path) -> None:
    _refused(tmp_path, settings, "is a folder")


def test_given_a_missing_folder_then_refused(settings: Settings, tmp_path: Path) -> None:
    _refused(tmp_path / "nowhere" / "out.csv", settings, "does not exist")


def test_given_a_file_outside_the_lake_then_it_is_replaced_whole_and_no_temporary_remains(
    settings: Settings, lake: Lake, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    out.write_text("old")

    write_output(FRAME, "parquet", out, lake=settings.lake)

    assert pl.read_parquet(out).equals(FRAME)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


@pytest.mark.parametrize("command", [["sql", "SELECT 1 AS x"], ["report"]])
def test_given_out_inside_the_lake_on_the_command_line_then_exit_2_and_the_lake_still_reads(
    settings: Settings, lake: Lake, tmp_path: Path, command: list[str]
) -> None:
    partition = lake.files("sequences")[0]
    before, rows = Path(partition).read_bytes(), lake.read("sequences")
    if command == ["report"]:  # report needs scores
        _score(lake)
    version = lake.version("sequences")

    done = run_cli(*command, "--out", partition, "--lake", settings.lake, cwd=tmp_path)

    assert done.code == 2 and "inside the lake" in done.error_line
    assert Path(partition).read_bytes() == before
    assert lake.version("sequences") == version and lake.read("sequences").equals(rows)


def _score(lake: Lake) -> None:
    """Scores, every column, for the sessions of the first sequences date."""
    day = lake.dates("sequences")[0]
    scores = lake.read("sequences", day, day).select(
        "session_id",
        "cookie_id",
        "session_start",
        "n_events",
        score=pl.lit(0.5, pl.Float32),
        model_name=pl.lit("stand-in"),
        model_version=pl.lit("1"),
        scored_at=pl.lit(dt.datetime(2014, 4, 2, tzinfo=dt.UTC)),
        date=pl.lit(day),
    )
    lake.commit("scores", scores, replace=dates_predicate(day, day), stage="test")


def test_given_a_folder_as_out_on_the_command_line_then_exit_2(settings: Settings, tmp_path: Path) -> None:
    out = str(tmp_path)
    done = run_cli("sql", "SELECT 1 AS x", "--format", "csv", "--out", out, "--lake", settings.lake, cwd=tmp_path)

    assert done.code == 2 and "is a folder" in done.error_line
