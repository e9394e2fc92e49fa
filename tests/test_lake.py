"""The lake keeps its promises on a local disk and on S3 alike: a commit replaces exactly the rows
its predicate names, in one step that every reader sees whole; scans carry the partition date in
date order; older versions stay readable; every commit records who made it; a table still in the
layout before Delta is refused, not misread; and concurrent writer processes either both land
(different rows) or one lands and the other fails with LakeConflictError, never leaving a mix.

The S3 lake runs against moto's S3 server in a process of its own on 127.0.0.1 (delta-rs holds
the GIL while it lists a table's history, so a server thread in this process would never answer
it); endpoint and credentials reach delta-rs, polars, s3fs and the child processes only through
the AWS_* environment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from lake_writers import ROWS_PER_DATE, Held, held, scores_rows

from clickstream.pipeline.core.errors import LakeFormatError, LakePathError, NoDataError
from clickstream.pipeline.core.lake import TABLE_SCHEMAS, Lake, batch_predicate, code_version, dates_predicate

DAY = dt.date(2024, 3, 1)

@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """An empty lake on local disk or in a fresh S3 bucket."""
    if request.param == "local":
        return Lake(tmp_path / "lake")
    return Lake(f"{request.getfixturevalue('s3_bucket')}/root")


def _day(offset: int) -> dt.date:
    return DAY + dt.timedelta(days=offset)


def _tags(lake: Lake, version: int | None = None) -> dict[dt.date, list[str]]:
    """The tags (model_version) on each date of `scores` at `version`, sorted, with repeats."""
    frame = lake.read("scores", version=version).sort("date", "model_version")
    return {day: part["model_version"].to_list() for (day,), part in frame.group_by("date", maintain_order=True)}


def _whole(tag: str, rows: int = ROWS_PER_DATE) -> list[str]:
    return [tag] * rows


def _events(batch: str, days: list[dt.date], rows: int) -> pl.DataFrame:
    """`rows` events of ingest batch `batch` on each of `days`, every column of the events table."""
    frame = pl.DataFrame({"date": days}).join(pl.DataFrame({"n": pl.int_range(rows, eager=True)}), how="cross")
    return frame.select(
        session_id=pl.format("{}-{}", pl.lit(batch), pl.col("n")),
        cookie_id=pl.lit(None, pl.String),
        ts=pl.col("date").cast(pl.Datetime("us", "UTC")) + pl.duration(minutes=pl.col("n")),
        event_type=pl.lit("view"),
        item_id=pl.format("i{}", pl.col("n")),
        category=pl.lit(None, pl.String),
        price=pl.lit(None, pl.Float64),
        quantity=pl.lit(None, pl.Int32),
        source=pl.lit("yoochoose"),
        labelled=pl.lit(True),
        batch=pl.lit(batch),
        date=pl.col("date"),
    )


def _batches(lake: Lake) -> dict[tuple[dt.date, str], int]:
    counts = lake.read("events").group_by("date", "batch").len()
    return {(day, batch): n for day, batch, n in counts.iter_rows()}


# ---- reading ----------------------------------------------------------------------


def test_given_rows_on_several_days_when_scanned_then_rows_carry_their_date_in_date_order(lake: Lake) -> None:
    frames = (scores_rows(_day(d), _day(d), f"t{d}", rows=d + 1) for d in (2, 0, 1))  # committed out of order
    lake.commit("scores", frames, replace=dates_predicate(_day(0), _day(2)), stage="test")

    everything = lake.scan("scores").collect()
    middle = lake.scan("scores", start=_day(1), end=_day(1)).collect()

    assert everything.schema["date"] == pl.Date
    assert everything["date"].to_list() == [_day(0)] + [_day(1)] * 2 + [_day(2)] * 3
    assert _tags(lake) == {_day(0): ["t0"], _day(1): ["t1"] * 2, _day(2): ["t2"] * 3}
    assert middle["date"].unique().to_list() == [_day(1)] and middle["model_version"].to_list() == ["t1", "t1"]
    assert lake.dates("scores") == [_day(0), _day(1), _day(2)]
    assert lake.rows_per_date("scores") == {_day(0): 1, _day(1): 2, _day(2): 3}
    assert lake.require_dates("scores", _day(1), None, "run it first") == [_day(1), _day(2)]
    assert lake.read("scores", start=_day(2)).columns == TABLE_SCHEMAS["scores"].names()
    assert lake.files("scores", _day(1), _day(1)) and all(
        f"date={_day(1)}/" in path for path in lake.files("scores", _day(1), _day(1))
    )


def test_given_a_table_never_written_then_it_reads_as_empty_and_says_what_to_run(lake: Lake) -> None:
    lake.commit("scores", scores_rows(DAY, DAY, "other"), replace=dates_predicate(DAY, DAY), stage="test")

    assert lake.table("sequences") is None and lake.version("sequences") is None
    assert lake.dates("sequences") == [] and lake.rows_per_date("sequences") == {}
    assert lake.scan("sequences") is None and lake.files("sequences") == []
    empty = lake.read("sequences")
    assert empty.height == 0 and empty.schema == TABLE_SCHEMAS["sequences"]
    with pytest.raises(NoDataError, match=r"^no sequences/ partitions .*; run `clickstream sequences` first$"):
        lake.require_dates("sequences", None, None, "run `clickstream sequences` first")
    with pytest.raises(LakeFormatError, match="nothing was written"):
        lake.history("sequences")


def test_given_a_commit_with_a_date_predicate_then_exactly_those_dates_are_replaced(lake: Lake) -> None:
    lake.commit("scores", scores_rows(_day(0), _day(3), "old"), replace=dates_predicate(_day(0), _day(3)), stage="a")

    lake.commit(
        "scores", scores_rows(_day(1), _day(2), "new", rows=2), replace=dates_predicate(_day(1), _day(2)), stage="b"
    )

    assert _tags(lake) == {_day(0): _whole("old"), _day(1): ["new"] * 2, _day(2): ["new"] * 2, _day(3): _whole("old")}

    lake.commit("scores", scores_rows(_day(5), _day(5), "all", rows=1), replace=None, stage="c")  # the whole table
    assert _tags(lake) == {_day(5): ["all"]}


def test_given_a_commit_with_a_batch_predicate_then_only_that_batch_is_replaced_on_every_date(lake: Lake) -> None:
    lake.commit("events", _events("aa", [_day(0), _day(1)], rows=4), replace=batch_predicate("aa"), stage="ingest")
    lake.commit("events", _events("bb", [_day(1), _day(2)], rows=3), replace=batch_predicate("bb"), stage="ingest")

    lake.commit("events", _events("aa", [_day(0)], rows=2), replace=batch_predicate("aa"), stage="ingest")

    # batch aa's rows of day 1 are gone with its re-delivery; bb's rows on the same date stay
    assert _batches(lake) == {(_day(0), "aa"): 2, (_day(1), "bb"): 3, (_day(2), "bb"): 3}
    assert lake.dates("events") == [_day(0), _day(1), _day(2)]


def test_given_a_commit_then_another_lake_object_sees_it_at_once(lake: Lake) -> None:
    reader = Lake(lake.root)
    lake.commit("scores", scores_rows(DAY, DAY, "first"), replace=dates_predicate(DAY, DAY), stage="test")
    assert reader.dates("scores") == [DAY]  # a table and a listing that a cache could keep

    version = lake.commit(
        "scores", scores_rows(_day(1), _day(1), "second"), replace=dates_predicate(_day(1), _day(1)), stage="test"
    )

    assert reader.version("scores") == version
    assert reader.dates("scores") == [DAY, _day(1)]
    assert _tags(reader) == {DAY: _whole("first"), _day(1): _whole("second")}


@pytest.mark.parametrize("table", ["../events", "events/../../x", "/etc", "", "Events", "_config", "events/"])
def test_given_a_crafted_table_name_then_every_operation_refuses_it(lake: Lake, table: str) -> None:
    operations = {
        "table_uri": lambda: lake.table_uri(table),
        "table": lambda: lake.table(table),
        "scan": lambda: lake.scan(table),
        "read": lambda: lake.read(table),
        "history": lambda: lake.history(table),
        "commit": lambda: lake.commit(table, scores_rows(DAY, DAY, "x"), replace=None, stage="test"),
    }
    for name, operation in operations.items():
        with pytest.raises((LakePathError, KeyError)) as error:
            operation()
        assert error.type is LakePathError, name
        assert "unknown lake table" in str(error.value) and "\n" not in str(error.value), name
    assert lake.fs.find(lake.root) == []  # nothing was written anywhere


# ---- versions and history -----------------------------------------------------------


def test_given_several_commits_then_each_older_version_reads_as_it_was(lake: Lake) -> None:
    first = lake.commit(
        "scores", scores_rows(_day(0), _day(1), "a"), replace=dates_predicate(_day(0), _day(1)), stage="test"
    )
    second = lake.commit(
        "scores", scores_rows(_day(1), _day(1), "b"), replace=dates_predicate(_day(1), _day(1)), stage="test"
    )
    third = lake.commit(
        "scores", scores_rows(_day(2), _day(2), "c", rows=5), replace=dates_predicate(_day(0), _day(2)), stage="test"
    )

    assert first < second < third == lake.version("scores")
    assert _tags(lake, first) == {_day(0): _whole("a"), _day(1): _whole("a")}
    assert _tags(lake, second) == {_day(0): _whole("a"), _day(1): _whole("b")}
    assert _tags(lake, third) == _tags(lake) == {_day(2): ["c"] * 5}
    assert lake.dates("scores", first) == [_day(0), _day(1)]
    assert lake.rows_per_date("scores", second) == {_day(0): ROWS_PER_DATE, _day(1): ROWS_PER_DATE}
    assert lake.scan("scores", _day(1), _day(1), version=second).collect()["model_version"].unique().to_list() == ["b"]
    with pytest.raises(LakeFormatError, match=f"scores of lake .* has no version {third + 5}"):
        lake.read("scores", version=third + 5)


def test_given_commits_then_history_lists_them_newest_first_with_stage_batch_metadata_and_code_version(
    lake: Lake,
) -> None:
    ingest = lake.commit(
        "events",
        _events("ab12", [_day(0), _day(1)], rows=3),
        replace=batch_predicate("ab12"),
        stage="ingest",
        metadata={"batch": "ab12", "rows_read": 7},
    )
    build = lake.commit(
        "events",
        _events("cd34", [_day(1)], rows=2),
        replace=batch_predicate("cd34"),
        stage="sequences-test",
        metadata={"events_version": ingest, "first_date": _day(1)},
    )

    history = lake.history("events")

    assert [c.version for c in history][:2] == [build, ingest]
    assert [c.version for c in history] == sorted((c.version for c in history), reverse=True)
    newest, older = history[0], history[1]
    assert (older.stage, older.batch, older.rows) == ("ingest", "ab12", 6)
    assert older.metadata["rows_read"] == "7" and older.metadata["code_version"] == code_version() != "unknown"
    assert (newest.stage, newest.batch, newest.rows) == ("sequences-test", "", 2)
    assert newest.metadata["events_version"] == str(ingest) and newest.metadata["first_date"] == str(_day(1))
    assert newest.timestamp >= older.timestamp
    assert lake.commit_metadata("events", ingest) == older.metadata


def test_given_a_table_in_the_layout_before_delta_then_it_is_refused_naming_the_migration(lake: Lake) -> None:
    buffer = io.BytesIO()
    scores_rows(DAY, DAY, "old").drop("date").write_parquet(buffer)
    folder = f"{lake.table_uri('scores')}/date={DAY}"
    lake.fs.makedirs(folder, exist_ok=True)
    lake.fs.pipe(f"{folder}/data.parquet", buffer.getvalue())

    for read in (lambda: lake.table("scores"), lambda: lake.dates("scores"), lambda: lake.scan("scores")):
        with pytest.raises(LakeFormatError, match=r"before Delta tables; run `clickstream lake migrate`$") as error:
            read()
        assert "\n" not in str(error.value)
    for replace in (dates_predicate(DAY, DAY), None):  # a commit must not bury the old files under a new table
        with pytest.raises(LakeFormatError, match="clickstream lake migrate"):
            lake.commit("scores", scores_rows(DAY, DAY, "new"), replace=replace, stage="test")
    assert not lake.fs.exists(f"{lake.table_uri('scores')}/_delta_log")
    assert lake.fs.cat(f"{folder}/data.parquet") == buffer.getvalue()


class _ProducerBroke(Exception):
    pass


@pytest.mark.parametrize("frames_before_error", [0, 2])
def test_given_a_producer_error_inside_the_generator_then_the_commit_aborts_with_it_and_nothing_changes(
    lake: Lake, frames_before_error: int
) -> None:
    before = lake.commit(
        "scores", scores_rows(_day(0), _day(2), "kept"), replace=dates_predicate(_day(0), _day(2)), stage="test"
    )
    broke = _ProducerBroke("the producer broke")

    def frames() -> Iterator[pl.DataFrame]:
        for offset in range(frames_before_error):
            yield scores_rows(_day(offset), _day(offset), "lost")
        raise broke

    with pytest.raises(_ProducerBroke) as error:
        lake.commit("scores", frames(), replace=dates_predicate(_day(0), _day(2)), stage="test")

    assert error.value is broke  # the original exception, not a wrapper
    assert lake.version("scores") == before and len(lake.history("scores")) == before + 1
    assert _tags(lake) == {_day(d): _whole("kept") for d in range(3)}
    after = lake.commit(
        "scores", scores_rows(_day(1), _day(1), "next"), replace=dates_predicate(_day(1), _day(1)), stage="test"
    )  # the next commit goes through
    assert after == before + 1 and _tags(lake)[_day(1)] == _whole("next")


# ---- concurrent writer processes ----------------------------------------------------


def _commit_held(lake: Lake, first: dt.date, last: dt.date, tag: str) -> contextlib.AbstractContextManager[Held]:
    """A child process committing `tag` rows to [first, last] of scores, held just before its commit."""
    return held(lake.root, moment="commit", table="scores", stage="scores", first=str(first), last=str(last), tag=tag)


def _commit_in_child(
    lake: Lake, first: dt.date, last: dt.date, tag: str, times: int = 1, whole: bool = False
) -> list[dict[str, object]]:
    with held(
        lake.root, moment="start", stage="scores", first=str(first), last=str(last), tag=tag, times=times, whole=whole
    ) as child:
        done = child.resume()
    assert done.code == 0, done.stderr[-3000:]
    return done.outcomes()


def test_given_a_writer_held_at_its_commit_when_another_process_commits_another_date_then_both_land(
    lake: Lake,
) -> None:
    base = lake.commit(
        "scores", scores_rows(_day(0), _day(1), "base"), replace=dates_predicate(_day(0), _day(1)), stage="test"
    )

    with _commit_held(lake, _day(0), _day(0), "A") as first:  # A has read version `base`
        (second,) = _commit_in_child(lake, _day(1), _day(1), "B")
        done = first.resume()

    assert done.code == 0, done.stderr[-3000:]
    (outcome,) = done.outcomes()
    assert (second["version"], outcome["version"]) == (base + 1, base + 2)
    assert _tags(lake) == {_day(0): _whole("A/0"), _day(1): _whole("B/0")}
    assert _tags(lake, base + 1) == {_day(0): _whole("base"), _day(1): _whole("B/0")}


def test_given_another_process_commits_right_after_a_commit_then_the_commit_reports_its_own_version(
    lake: Lake,
) -> None:
    base = lake.commit(
        "scores", scores_rows(_day(0), _day(1), "base"), replace=dates_predicate(_day(0), _day(1)), stage="test"
    )

    with held(
        lake.root, moment="after", table="scores", stage="scores", first=str(_day(0)), last=str(_day(0)), tag="A"
    ) as first:  # A has committed, and not yet said which version it made
        (second,) = _commit_in_child(lake, _day(1), _day(1), "B")
        done = first.resume()

    assert done.code == 0, done.stderr[-3000:]
    (outcome,) = done.outcomes()
    assert (outcome["version"], second["version"]) == (base + 1, base + 2)
    assert lake.commit_metadata("scores", base + 1)["writer"] == "A"


@pytest.mark.parametrize(
    ("before", "other"),
    [((0, 2), (0, 1)), ((0, 2), (1, 2)), ((5, 5), (0, 1)), (None, (0, 1))],
    ids=["same-dates", "one-date-shared", "dates-without-rows-yet", "new-table"],
)
def test_given_a_writer_held_at_its_commit_when_another_process_replaces_the_same_rows_then_it_is_refused(
    lake: Lake, before: tuple[int, int] | None, other: tuple[int, int]
) -> None:
    expected: dict[dt.date, list[str]] = {}
    if before is not None:
        first, last = _day(before[0]), _day(before[1])
        lake.commit("scores", scores_rows(first, last, "base"), replace=dates_predicate(first, last), stage="test")
        expected = {_day(d): _whole("base") for d in range(before[0], before[1] + 1)}

    with _commit_held(lake, _day(0), _day(1), "A") as held_writer:  # A replaces days 0 and 1
        (winner,) = _commit_in_child(lake, _day(other[0]), _day(other[1]), "B")
        done = held_writer.resume()

    assert done.code == 0, done.stderr[-3000:]
    (refused,) = done.outcomes()
    assert "version" not in refused, "both writers landed"
    assert "another writer changed the same rows of scores" in str(refused["conflict"])
    assert "\n" not in str(refused["conflict"])
    assert lake.version("scores") == winner["version"]  # A committed nothing
    assert _tags(lake) == expected | {_day(d): _whole("B/0") for d in range(other[0], other[1] + 1)}


@pytest.mark.parametrize("before", [False, True], ids=["new-table", "table-with-rows"])
def test_given_a_writer_held_at_its_whole_table_commit_when_another_process_rewrites_the_table_then_it_is_refused(
    lake: Lake, before: bool
) -> None:
    if before:
        lake.commit(
            "scores", scores_rows(_day(0), _day(2), "base"), replace=dates_predicate(_day(0), _day(2)), stage="test"
        )
    options = {"stage": "scores", "tag": "A", "whole": True}

    with held(lake.root, moment="commit", table="scores", first=str(_day(0)), last=str(_day(1)), **options) as writer:
        (winner,) = _commit_in_child(lake, _day(1), _day(2), "B", whole=True)
        done = writer.resume()

    assert done.code == 0, done.stderr[-3000:]
    (refused,) = done.outcomes()
    assert "version" not in refused, "both writers landed"
    assert "another writer changed the same rows of scores" in str(refused["conflict"])
    assert lake.version("scores") == winner["version"]
    assert _tags(lake) == {_day(1): _whole("B/0"), _day(2): _whole("B/0")}


def _race(lake: Lake, ranges: dict[str, tuple[dt.date, dt.date]], times: int) -> dict[str, list[dict[str, object]]]:
    """Writers (name -> dates) committing `times` times each, as processes released at the same instant."""
    with _both_held(lake, ranges, times) as children:
        for child in children.values():
            child.go()
        done = {name: child.finish() for name, child in children.items()}
    for name, finished in done.items():  # a failure other than LakeConflictError ends the child with a traceback
        assert finished.code == 0, f"{name}: {finished.stderr[-3000:]}"
    return {name: finished.outcomes() for name, finished in done.items()}


@contextlib.contextmanager
def _both_held(lake: Lake, ranges: dict[str, tuple[dt.date, dt.date]], times: int) -> Iterator[dict[str, Held]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                held(lake.root, moment="start", stage="scores", first=str(a), last=str(b), tag=name, times=times)
            )
            for name, (a, b) in ranges.items()
        }


def test_given_two_writer_processes_on_different_dates_when_they_race_then_every_commit_lands(lake: Lake) -> None:
    base = lake.commit(
        "scores", scores_rows(_day(0), _day(1), "base"), replace=dates_predicate(_day(0), _day(1)), stage="test"
    )
    times = 4

    outcomes = _race(lake, {"A": (_day(0), _day(0)), "B": (_day(1), _day(1))}, times)

    versions = sorted(o["version"] for results in outcomes.values() for o in results)  # KeyError on any conflict
    assert versions == list(range(base + 1, base + 1 + 2 * times)) == list(range(base + 1, lake.version("scores") + 1))
    assert _tags(lake) == {_day(0): _whole(f"A/{times - 1}"), _day(1): _whole(f"B/{times - 1}")}


def test_given_two_writer_processes_replacing_the_same_dates_when_they_race_then_every_version_is_one_writers_whole(
    lake: Lake,
) -> None:
    base = lake.commit(
        "scores", scores_rows(_day(0), _day(1), "base"), replace=dates_predicate(_day(0), _day(1)), stage="test"
    )

    outcomes = _race(lake, {"A": (_day(0), _day(1)), "B": (_day(0), _day(1))}, times=6)

    landed = {
        int(o["version"]): f"{name}/{o['commit']}"
        for name, results in outcomes.items()
        for o in results
        if "version" in o
    }
    refused = [str(o["conflict"]) for results in outcomes.values() for o in results if "version" not in o]
    assert len(landed) + len(refused) == 12 and landed  # a version reported twice would collapse here
    assert sorted(landed) == list(range(base + 1, lake.version("scores") + 1))  # each success is its own version
    assert all("another writer changed the same rows of scores" in message for message in refused)
    for version, tag in landed.items():  # every version ever committed: both dates wholly one commit's rows
        assert _tags(lake, version) == {_day(0): _whole(tag), _day(1): _whole(tag)}, version
    assert _tags(lake) == _tags(lake, max(landed))
