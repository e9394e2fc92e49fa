"""Ingestion keeps its promises: every row is accounted for (read = written + quarantined +
duplicates), a re-run of the same batch leaves identical tables, a changed input replaces
its own rows only (on every date, the quarantine's too), each table gets one commit per run
that names the stage and the batch, too many bad rows fail without writing events, and user
errors are one line with exit code 2. The bad-input corpus runs in tests/hostile."""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from bad_inputs.corpus import GOOD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import BadRowThresholdError, InputError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest import raw_files, read_yoochoose
from clickstream.pipeline.ingest.ingest import SORT_KEYS, batch_id, ingest_files, sort_events

TODAY = dt.date(2015, 1, 1)
BUYS = "1,2014-04-07T11:00:00.000Z,214536501,12462,1\n1,2014-04-07T11:00:00.000Z,214536501,12462,1\n"


def write(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def tables(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every row of events and quarantine, in the order a reader gets them."""
    return {table: lake.read(table) for table in ("events", "quarantine")}


def test_given_clicks_and_buys_then_events_are_partitioned_by_date_sorted_and_labelled(
    settings: Settings, tmp_path: Path
) -> None:
    paths = write(tmp_path / "in", {"clicks.dat": GOOD.encode(), "buys.dat": BUYS.encode()})
    summary = ingest_files(settings, "yoochoose", [paths["clicks.dat"]], [paths["buys.dat"]], ingestion_date=TODAY)
    assert (summary.rows_read, summary.rows_written, summary.quarantined, summary.duplicates) == (201, 200, 0, 1)
    assert summary.dates == (dt.date(2014, 4, 7),)
    events = Lake(settings.lake).scan("events").collect()
    assert events["labelled"].all() and events.filter(pl.col("event_type") == "purchase").height == 1
    assert events.select("session_id", "ts").rows() == sorted(events.select("session_id", "ts").rows())
    assert events["batch"].unique().to_list() == [summary.batch]
    assert events["date"].equals(events["ts"].dt.date(), check_names=False)
    assert Lake(settings.lake).rows_per_date("events") == {dt.date(2014, 4, 7): 200}
    assert "200 written" in str(summary) and "\n" not in str(summary)


@pytest.mark.parametrize("chunk_bytes", [40, 700])
def test_given_small_chunks_then_the_events_equal_those_of_one_chunk(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    # chunks of one line hold one value per column; a chunk's constant columns are staged apart
    clicks = GOOD + "1,2014-04-08T10:00:00.000Z,214536501,S\n"
    paths = write(tmp_path / "in", {"clicks.dat": clicks.encode(), "buys.dat": BUYS.encode()})
    whole = ingest_files(settings, "yoochoose", [paths["clicks.dat"]], [paths["buys.dat"]], ingestion_date=TODAY)
    expected = Lake(settings.lake).scan("events").collect()
    small = functools.partial(raw_files.iter_line_chunks, chunk_bytes=chunk_bytes)
    monkeypatch.setattr(read_yoochoose, "iter_line_chunks", small)
    lake = settings.with_overrides(lake=str(tmp_path / "small-lake"))
    summary = ingest_files(lake, "yoochoose", [paths["clicks.dat"]], [paths["buys.dat"]], ingestion_date=TODAY)
    assert summary == whole
    assert Lake(lake.lake).scan("events").collect().equals(expected)
    assert expected.height == 201 and expected["ts"].dt.date().n_unique() == 2


def test_given_clicks_without_buys_then_events_are_unlabelled(settings: Settings, tmp_path: Path) -> None:
    paths = write(tmp_path / "in", {"clicks.dat.gz": gzip.compress(GOOD.encode())})
    ingest_files(settings, "yoochoose", [paths["clicks.dat.gz"]], ingestion_date=TODAY)
    assert not Lake(settings.lake).scan("events").collect()["labelled"].any()


def test_given_the_same_batch_twice_then_the_tables_are_identical(settings: Settings, tmp_path: Path) -> None:
    paths = write(tmp_path / "in", {"clicks.dat": (GOOD + "1,bad,2,3\n").encode()})
    lake = Lake(settings.lake)
    first = ingest_files(settings, "yoochoose", [paths["clicks.dat"]], ingestion_date=TODAY)
    before = tables(lake)
    versions = {table: lake.version(table) for table in before}
    second = ingest_files(settings, "yoochoose", [paths["clicks.dat"]], ingestion_date=TODAY)
    after = tables(lake)
    assert all(after[table].equals(before[table]) for table in before)  # same rows, same order: not doubled
    assert {table: lake.version(table) for table in before} == {t: v + 1 for t, v in versions.items()}
    assert (after["events"].height, after["quarantine"].height) == (first.rows_written, first.quarantined) == (199, 1)
    assert first == second


def test_given_a_changed_input_then_its_stale_dates_go_and_other_batches_stay(
    settings: Settings, tmp_path: Path
) -> None:
    lake = Lake(settings.lake)
    other = write(tmp_path / "other", {"clicks.dat": GOOD.encode()})["clicks.dat"]
    ingest_files(settings, "yoochoose", [other], ingestion_date=TODAY)
    path = write(tmp_path / "in", {"clicks.dat": (GOOD + "5,2014-04-09T10:00:00Z,1,0\n").encode()})["clicks.dat"]
    first = ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)
    assert first.dates == (dt.date(2014, 4, 7), dt.date(2014, 4, 9))
    others = lake.read("events").filter(pl.col("batch") == batch_id("yoochoose", [other]))
    path.write_text(GOOD.replace("2014-04-07", "2014-04-08"))
    second = ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)
    assert second.batch == first.batch and second.dates == (dt.date(2014, 4, 8),)
    assert (first.dropped, second.dropped) == ((), (dt.date(2014, 4, 7), dt.date(2014, 4, 9)))
    assert second.rebuild == (dt.date(2014, 4, 6), dt.date(2014, 4, 10)) and first.rebuild is None
    assert "clickstream sequences --start 2014-04-06 --end 2014-04-10" in str(second)
    assert lake.dates("events") == [dt.date(2014, 4, 7), dt.date(2014, 4, 8)]  # 2014-04-09 went with the batch
    events = lake.read("events")
    assert events.filter(pl.col("date") == dt.date(2014, 4, 7)).equals(others)  # the other batch's rows, untouched
    assert events.filter(pl.col("date") == dt.date(2014, 4, 8))["batch"].unique().to_list() == [second.batch]
    assert events.group_by("batch").len().sort("batch").rows() == sorted(
        [(others["batch"][0], others.height), (second.batch, second.rows_written)]
    )


def test_given_too_many_bad_rows_then_it_fails_writing_the_quarantine_but_no_events(
    settings: Settings, tmp_path: Path
) -> None:
    path = write(tmp_path / "in", {"clicks.dat": (GOOD[:400] + "x\n" * 10).encode()})["clicks.dat"]
    with pytest.raises(BadRowThresholdError, match=r"10 of \d+ rows .* above the 5.00% threshold") as error:
        ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)
    assert str(path) in str(error.value)
    lake = Lake(settings.lake)
    assert lake.dates("events") == []
    assert lake.scan("quarantine").collect()["reason"].to_list() == ["wrong column count (expected 4)"] * 10


def test_given_a_buys_file_as_clicks_then_an_input_error_says_where_buys_go_and_nothing_is_written(
    settings: Settings, tmp_path: Path
) -> None:
    paths = write(tmp_path / "in", {"clicks.dat": GOOD.encode(), "buys.dat": BUYS.encode()})
    with pytest.raises(InputError, match=r"buys.dat: none of its 2 rows .* \(expected 4\).* after --buys") as error:
        ingest_files(settings, "yoochoose", [paths["clicks.dat"], paths["buys.dat"]], ingestion_date=TODAY)
    assert "\n" not in str(error.value)
    lake = Lake(settings.lake)
    assert lake.dates("events") == []
    assert lake.scan("quarantine").collect()["reason"].to_list() == ["wrong column count (expected 4)"] * 2


def test_given_a_batch_re_ingested_on_a_later_day_then_its_quarantine_rows_move_to_that_day_not_doubled(
    settings: Settings, tmp_path: Path
) -> None:
    lake = Lake(settings.lake)
    other = write(tmp_path / "other", {"clicks.dat": (GOOD + "x\n").encode()})["clicks.dat"]
    kept = ingest_files(settings, "yoochoose", [other], ingestion_date=TODAY)
    path = write(tmp_path / "in", {"clicks.dat": (GOOD + "1,bad,2,3\nx\n").encode()})["clicks.dat"]
    first = ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)
    later = TODAY + dt.timedelta(days=3)
    second = ingest_files(settings, "yoochoose", [path], ingestion_date=later)

    quarantine = lake.read("quarantine")
    assert (first.quarantined, second.quarantined, second.batch) == (2, 2, first.batch)
    mine = quarantine.filter(pl.col("batch") == first.batch)
    assert mine.select("line", "date").rows() == [(200, later), (201, later)]  # replaced, not added to
    assert quarantine.filter(pl.col("batch") == kept.batch).select("line", "date").rows() == [(200, TODAY)]
    assert lake.rows_per_date("quarantine") == {TODAY: 1, later: 2}


def test_each_ingest_commits_once_per_table_recording_the_stage_the_batch_and_the_row_counts(
    settings: Settings, tmp_path: Path
) -> None:
    lake = Lake(settings.lake)
    clicks = GOOD + "1,bad,2,3\n" + GOOD.splitlines()[0] + "\n"  # a bad row and a duplicate
    path = write(tmp_path / "in", {"clicks.dat": clicks.encode()})["clicks.dat"]
    first = ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)
    versions = {table: lake.version(table) for table in ("events", "quarantine")}
    second = ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)

    assert {table: lake.version(table) for table in versions} == {t: v + 1 for t, v in versions.items()}
    assert (first.rows_read, first.rows_written, first.quarantined, first.duplicates) == (201, 199, 1, 1)
    # newest first: the second run's commits, the first run's, then the tables' creation
    writes = zip(lake.history("events")[:2], lake.history("quarantine")[:2], strict=True)
    for summary, (events, quarantine) in zip((second, first), writes, strict=True):
        assert (events.stage, events.batch, events.rows) == ("ingest", summary.batch, summary.rows_written)
        assert events.metadata["rows_read"] == str(summary.rows_read)
        assert events.metadata["dates"] == str(len(summary.dates))
        assert (quarantine.stage, quarantine.batch, quarantine.rows) == ("ingest", summary.batch, summary.quarantined)
        assert quarantine.metadata["rows"] == str(summary.quarantined)
    assert [commit.operation for commit in lake.history("events")] == ["WRITE", "WRITE", "CREATE TABLE"]


ROWS = st.lists(
    st.sampled_from([*GOOD.splitlines()[:20], "", "x", "1,2,3,4", "\x00", "1,1970-01-01T00:00:00Z,1,0"]), max_size=60
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_given_any_mix_of_rows_then_read_equals_written_plus_quarantined_plus_duplicates(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, rows: list[str]
) -> None:
    if not rows:
        return
    path = write(tmp_path_factory.mktemp("in"), {"clicks.dat": "\n".join(rows).encode() + b"\n"})["clicks.dat"]
    fresh = settings.with_overrides(bad_row_threshold=1.0, lake=str(tmp_path_factory.mktemp("lake")))
    if not set(rows) & set(GOOD.splitlines()):  # not one valid row: the wrong file, whatever the threshold
        with pytest.raises(InputError, match="none of its"):
            ingest_files(fresh, "yoochoose", [path], ingestion_date=TODAY)
        return
    summary = ingest_files(fresh, "yoochoose", [path], ingestion_date=TODAY)
    assert summary.rows_read == len(rows)
    assert summary.rows_read == summary.rows_written + summary.quarantined + summary.duplicates
    lake = Lake(fresh.lake)
    events, quarantine = lake.read("events"), lake.read("quarantine")
    assert (events.height, quarantine.height) == (summary.rows_written, summary.quarantined)
    assert sum(lake.rows_per_date("events").values()) == summary.rows_written
    assert set(events["batch"]) | set(quarantine["batch"]) == {summary.batch}
    assert set(quarantine["date"]) <= {TODAY}


TIED_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["1", "10", "2", None]),  # session: few values, so that many rows tie on it
        st.integers(0, 2),  # ts: the same
        st.sampled_from(["purchase", "view"]),
        st.sampled_from(["9", "10", None]),
        st.sampled_from(["S", "3", None]),
        st.sampled_from([1.5, 20.0, None]),
        st.sampled_from([1, 2, None]),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(rows=TIED_EVENTS)
def test_given_events_that_tie_on_session_and_time_then_the_sort_equals_one_sort_on_all_keys(
    rows: list[tuple],
) -> None:
    names = ["session_id", "ts", "event_type", "item_id", "category", "price", "quantity"]
    schema = dict(zip(names, [pl.String, pl.Int64, pl.String, pl.String, pl.String, pl.Float64, pl.Int32], strict=True))
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    keys = [key for key in SORT_KEYS if key in names]
    assert sort_events(frame).equals(frame.sort(keys, nulls_last=True))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [("missing.dat", None, "no such file"), ("c.dat.gz", b"\x1f\x8b\x08\x00broken", "truncated gzip")],
)
def test_given_a_user_error_then_the_cli_prints_one_line_and_exits_2(
    tmp_path: Path, name: str, content: bytes | None, fragment: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_cli("ingest", "--format", "yoochoose", str(path), "--lake", str(tmp_path / "lake"))
    assert result.returncode == 2
    assert fragment in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
