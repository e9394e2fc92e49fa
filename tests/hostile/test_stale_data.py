"""Derived data never outlives its source, and a re-delivery replaces what it delivered before.

Each test replays a hostile probe: a re-delivered file with fewer dates (its dropped dates'
sequences and scores were used by train and score), lake roots with glob or Hive characters, and
clicks sent alone and later with their buys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_process import run_cli

from clickstream.features.sequences import build_sequences, read_sequences, stale_dates
from clickstream.models.training.window import prepare
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LakePathError, NoDataError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest import ingest as ingest_module
from clickstream.pipeline.ingest.ingest import ingest_files
from clickstream.pipeline.orchestrate import nightly
from clickstream.pipeline.serve.scoring import score_with

TODAY = dt.date(2015, 1, 1)
DAY = dt.date(2014, 4, 1)
HEADER = "cookie_id,ts,event_type,item_id\n"


class HalfScorer:
    """A stand-in model: every session scores 0.5 (scoring needs no trained model to be tested)."""

    model_name, model_version = "stand-in", "1"

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        return np.full(sequences.height, 0.5, dtype=np.float32)

    def running_scores(self, sequences: pl.DataFrame) -> np.ndarray:
        return self.score(sequences)


def _cookie_log(days: int) -> str:
    """A cookie event log with two cookies a day for `days` days from DAY, one buying."""
    lines = [HEADER]
    for offset in range(days):
        day = DAY + dt.timedelta(days=offset)
        for cookie, kinds in ((f"c{offset}", ("view", "view", "purchase")), (f"d{offset}", ("view", "view"))):
            lines += [f"{cookie},{day}T10:0{n}:00Z,{kind},i{n}\n" for n, kind in enumerate(kinds)]
    return "".join(lines)


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


# ---- a re-delivered batch with fewer dates --------------------------------------------------------


@pytest.fixture
def corrected(settings: Settings, tmp_path: Path) -> tuple[Settings, object]:
    """A 9-date cookie log ingested, built and scored, then corrected under the same path to 5 dates."""
    path = tmp_path / "in" / "events.csv"
    path.parent.mkdir()
    path.write_text(_cookie_log(9))
    ingest_files(settings, "events", [path], ingestion_date=TODAY)
    build_sequences(settings, None, None)
    lake = Lake(settings.lake)
    score_with(settings, HalfScorer(), lake.dates("sequences"))
    assert len(lake.dates("scores")) == 9 and lake.read("cookie_intent").height == 18
    path.write_text(_cookie_log(5))
    return settings, ingest_files(settings, "events", [path], ingestion_date=TODAY)


def test_given_a_batch_re_delivered_with_fewer_dates_then_the_summary_marks_the_dropped_dates_for_rebuild(
    corrected: tuple[Settings, object],
) -> None:
    _, summary = corrected

    dropped = tuple(_days(DAY + dt.timedelta(days=5), DAY + dt.timedelta(days=8)))
    assert summary.dates == tuple(_days(DAY, DAY + dt.timedelta(days=4)))
    assert summary.dropped == dropped
    assert summary.rebuild == (DAY + dt.timedelta(days=4), DAY + dt.timedelta(days=9))
    line = str(summary)
    assert "\n" not in line and "4 date(s) no longer in this batch (2014-04-06..2014-04-09)" in line
    assert "clickstream sequences --start 2014-04-05 --end 2014-04-10" in line
    assert "clickstream score --start 2014-04-05 --end 2014-04-10" in line


def test_given_sequences_of_dropped_dates_then_train_and_score_refuse_them_until_rebuilt(
    corrected: tuple[Settings, object],
) -> None:
    settings, _ = corrected
    lake = Lake(settings.lake)
    window = (DAY, DAY + dt.timedelta(days=8))

    assert stale_dates(lake) == _days(DAY + dt.timedelta(days=5), DAY + dt.timedelta(days=8))
    with pytest.raises(NoDataError, match=r"2014-04-06\.\.2014-04-09 \(4 date\(s\)\).*events that are gone"):
        read_sequences(lake, *window)
    with pytest.raises(NoDataError, match="clickstream sequences --start 2014-04-05 --end 2014-04-10"):
        prepare(settings, settings.train, *window)  # what training reads
    with pytest.raises(NoDataError, match="events that are gone"):
        score_with(settings, HalfScorer(), lake.dates("sequences"))
    assert read_sequences(lake, DAY, DAY + dt.timedelta(days=4)).height == 10  # untouched dates still read
    built = lake.version("sequences")
    build_sequences(settings, DAY, DAY)  # a newer version, still with the stale dates
    assert read_sequences(lake, *window, version=built).height == 18  # time travel reads what was
    with pytest.raises(NoDataError, match="events that are gone"):
        read_sequences(lake, *window, version=lake.version("sequences"))


def test_given_the_nightly_rebuild_of_the_marked_dates_then_their_sequences_and_scores_are_gone(
    corrected: tuple[Settings, object],
) -> None:
    settings, summary = corrected
    lake = Lake(settings.lake)
    last = DAY + dt.timedelta(days=4)

    built = nightly.rebuild_sequences(settings, last, last, dropped=[d.isoformat() for d in summary.dropped])

    kept = _days(DAY, last)
    assert lake.dates("sequences") == kept and stale_dates(lake) == []
    assert built["rebuilt"] == [["2014-04-05", "2014-04-10"]]
    assert built["scores_cleared"] == [d.isoformat() for d in summary.dropped]
    assert built["rescored"] == []  # no champion in this store: nothing can re-score the neighbours
    assert lake.dates("scores") == kept
    cookies = lake.read("cookie_intent")["cookie_id"].sort().to_list()
    assert cookies == sorted(f"{c}{n}" for c in "cd" for n in range(5))  # no cookie of a dropped date
    training = prepare(settings, settings.train, DAY, DAY + dt.timedelta(days=8))  # no longer refused
    used = [unit.day for unit in (*training.train.units, *training.val.units)]
    assert used and max(used) <= last  # nothing of the dropped dates
    again = nightly.rebuild_sequences(settings, last, last, dropped=[])
    assert (again["rebuilt"], again["scores_cleared"]) == ([], [])  # idempotent: nothing left to settle


def test_given_no_marks_passed_when_the_backfill_rebuilds_any_day_then_stale_dates_are_found_and_cleared(
    corrected: tuple[Settings, object],
) -> None:
    settings, _ = corrected
    lake = Lake(settings.lake)

    built = nightly.rebuild_sequences(settings, DAY, DAY)  # the backfill passes no marks

    assert built["rebuilt"] == [["2014-04-05", "2014-04-10"]]
    assert lake.dates("sequences") == _days(DAY, DAY + dt.timedelta(days=4))
    assert lake.dates("scores") == _days(DAY, DAY + dt.timedelta(days=4))


def test_given_the_cli_re_ingests_a_corrected_file_then_its_one_line_says_what_to_rebuild(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "events.csv"
    path.write_text(_cookie_log(9))
    lake = str(tmp_path / "lake")
    first = run_cli("ingest", "--format", "events", str(path), "--lake", lake, cwd=work)
    path.write_text(_cookie_log(5))
    second = run_cli("ingest", "--format", "events", str(path), "--lake", lake, cwd=work)

    assert (first.code, second.code) == (0, 0), second.stderr
    assert "no longer" not in first.stdout
    assert len(second.stdout.strip().splitlines()) == 1
    assert "4 date(s) no longer in this batch" in second.stdout
    assert "clickstream sequences --start 2014-04-05 --end 2014-04-10" in second.stdout


# ---- session identity ----------------------------------------------------------------------------


# ---- lake paths are never patterns ---------------------------------------------------------------


def _yoochoose(tmp_path: Path, settings: Settings, clicks: str, name: str = "clicks.dat") -> None:
    path = tmp_path / name
    path.write_text(clicks)
    ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY)


def _settings_for(settings: Settings, lake: Path, home: Path | None = None) -> Settings:
    overrides = {"lake": str(lake), "bad_row_threshold": 1.0}
    return settings.with_overrides(**overrides, **({"home": home} if home else {}))


@pytest.mark.parametrize("name", ["lake[1]", "lake?", "lake*", "x=1/date=2020-01-01/lake", "lake #é{a,b}"])
def test_given_a_lake_root_with_pattern_characters_then_it_ingests_builds_and_reads_only_its_own_data(
    settings: Settings, tmp_path: Path, name: str
) -> None:
    mine = _settings_for(settings, tmp_path / name, home=tmp_path / "state[1]?")  # the scratch folder too
    neighbour = _settings_for(settings, tmp_path / "lakeA")
    _yoochoose(tmp_path, neighbour, f"2,{DAY}T10:00:00.000Z,2,0\n3,{DAY}T10:00:00.000Z,3,0\n", "a.dat")
    build_sequences(neighbour, None, None)
    _yoochoose(tmp_path, mine, f"1,{DAY}T10:00:00.000Z,1,0\nbad line\n", "mine.dat")

    summary = build_sequences(mine, None, None)

    lake = Lake(mine.lake)
    assert summary.sessions == 1 and lake.dates("sequences") == [DAY]
    assert lake.read("events")["session_id"].to_list() == ["1"]
    assert read_sequences(lake, None, None)["session_id"].to_list() == ["1"]
    assert lake.read("quarantine")["raw"].to_list() == ["bad line"]
    assert all(path.startswith(str(tmp_path / name)) for path in lake.files("events"))
    assert Lake(neighbour.lake).read("events").height == 2  # and the neighbour only its own


@pytest.mark.parametrize("name", ["lake%3F", "lake\\b", "lake\x1b"])
def test_given_a_lake_root_the_delta_library_would_read_as_another_path_then_one_line_refuses_it(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(LakePathError, match="choose a root without it"):
        Lake(tmp_path / name)
    work = tmp_path / "work"
    work.mkdir()
    clicks = tmp_path / "c.dat"
    clicks.write_text(f"1,{DAY}T10:00:00.000Z,1,0\n")

    done = run_cli("ingest", "--format", "yoochoose", str(clicks), "--lake", str(tmp_path / name), cwd=work)

    assert done.code == 2 and "choose a root without it" in done.error_line
    assert not (tmp_path / name).exists() and not (tmp_path / "lake?").exists()


# ---- clicks alone, then the same clicks with their buys -------------------------------------------


def _clicks_then_buys(tmp_path: Path) -> tuple[Path, Path]:
    clicks, buys = tmp_path / "clicks.dat", tmp_path / "buys.dat"
    clicks.write_text(
        "".join(f"{s},{DAY}T10:0{n}:00.000Z,{s}{n},0\n" for s in range(1, 5) for n in range(3)) + "bad line\n"
    )
    buys.write_text(f"1,{DAY}T10:09:00.000Z,12,100,1\n3,{DAY}T10:09:00.000Z,32,100,1\n")
    return clicks, buys


def test_given_clicks_alone_and_later_with_their_buys_then_events_are_replaced_not_doubled(
    settings: Settings, tmp_path: Path
) -> None:
    clicks, buys = _clicks_then_buys(tmp_path)
    loose = settings.with_overrides(bad_row_threshold=1.0)
    lake = Lake(settings.lake)
    alone = ingest_files(loose, "yoochoose", [clicks], ingestion_date=TODAY)
    with_buys = ingest_files(loose, "yoochoose", [clicks], [buys], ingestion_date=TODAY + dt.timedelta(days=1))

    events = lake.read("events")
    assert with_buys.batch == alone.batch and events["batch"].unique().to_list() == [alone.batch]
    assert events.height == 12 + 2 and events["labelled"].all()
    assert events.filter(pl.col("event_type") == "view").height == 12  # the clicks once, not twice
    quarantine = lake.read("quarantine")  # the bad line once, on the later ingestion date
    assert quarantine.select("raw", "date").rows() == [("bad line", TODAY + dt.timedelta(days=1))]
    summary = build_sequences(settings, None, None)
    assert (summary.sessions, summary.buyers, summary.unknown_labels) == (4, 2, 0)


def test_given_a_lake_written_when_buys_counted_in_the_batch_id_then_re_sending_heals_the_doubled_clicks(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clicks, buys = _clicks_then_buys(tmp_path)
    loose = settings.with_overrides(bad_row_threshold=1.0)
    lake = Lake(settings.lake)
    old_id = ingest_module._hashed("yoochoose", [clicks], [buys])
    ingest_files(loose, "yoochoose", [clicks], ingestion_date=TODAY)
    with monkeypatch.context() as old_code:  # the id rule before: buys counted, a batch of its own
        old_code.setattr(ingest_module, "_batch_of", lambda *_: (old_id, []))
        ingest_files(loose, "yoochoose", [clicks], [buys], ingestion_date=TODAY)
    assert lake.read("events").height == 2 * 12 + 2  # the doubled clicks of the probe

    healed = ingest_files(loose, "yoochoose", [clicks], [buys], ingestion_date=TODAY)

    events = lake.read("events")
    assert events.height == 12 + 2 and events["batch"].unique().to_list() == [healed.batch]
    assert lake.read("quarantine").height == 1
    only_old = settings.with_overrides(lake=str(tmp_path / "only-old"), bad_row_threshold=1.0)
    with monkeypatch.context() as old_code:
        old_code.setattr(ingest_module, "_batch_of", lambda *_: (old_id, []))
        ingest_files(only_old, "yoochoose", [clicks], [buys], ingestion_date=TODAY)
    again = ingest_files(only_old, "yoochoose", [clicks], [buys], ingestion_date=TODAY)
    assert again.batch == old_id and Lake(only_old.lake).read("events").height == 14  # kept its id: replaced
