"""One session, one id: reused and cross-source session ids neither merge nor duplicate.

Replays the probes: a YOOCHOOSE session id reused on a later day (building that day alone gave a
second row of that id), YOOCHOOSE session `1` and a cookie log's session `1` (one session, the
cookie lost), and a cookie log's explicit id equal to a derived one (two rows, one id)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from clickstream.features.sequences import build_sequences
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.ingest import ingest_files

TODAY = dt.date(2015, 1, 1)
DAY = dt.date(2014, 4, 1)


def _clicks(tmp_path: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    """A YOOCHOOSE clicks file of (session_id, timestamp) rows, one item each."""
    path = tmp_path / name
    path.write_text("".join(f"{session},{ts},2145365{n:02d},0\n" for n, (session, ts) in enumerate(rows)))
    return path


def _ingest(settings: Settings, fmt: str, *files: Path) -> str:
    return str(ingest_files(settings, fmt, files, ingestion_date=TODAY))


def _sequences(settings: Settings, first: dt.date, last: dt.date) -> pl.DataFrame:
    build_sequences(settings, first, last)
    return Lake(settings.lake).read("sequences").sort("session_start")


def _ids(settings: Settings) -> dict[str, list[dt.date]]:
    events = Lake(settings.lake).read("events")
    spans = events.group_by("session_id").agg(pl.col("date").unique().sort()).sort("session_id")
    return dict(spans.iter_rows())


def test_an_id_reused_days_later_in_another_batch_is_another_session(settings: Settings, tmp_path: Path) -> None:
    _ingest(settings, "yoochoose", _clicks(tmp_path, "a.dat", [("5", "2014-04-01T10:00:00.000Z")] * 1))
    line = _ingest(settings, "yoochoose", _clicks(tmp_path, "b.dat", [("5", "2014-04-10T10:00:00.000Z")]))
    assert "1 session(s) reusing another's id renamed" in line
    assert _ids(settings) == {"5": [DAY], "5@yoochoose:2014-04-10": [dt.date(2014, 4, 10)]}
    # the day built alone and the whole range agree: two sessions, two ids
    alone = _sequences(settings, dt.date(2014, 4, 10), dt.date(2014, 4, 10))
    assert alone.get_column("session_id").to_list() == ["5@yoochoose:2014-04-10"]
    whole = _sequences(settings, DAY, dt.date(2014, 4, 10))
    assert whole.get_column("session_id").to_list() == ["5", "5@yoochoose:2014-04-10"]
    assert whole.get_column("n_events").to_list() == [1, 1]


def test_an_id_reused_within_one_batch_keeps_its_first_run(settings: Settings, tmp_path: Path) -> None:
    rows = [("7", "2014-04-01T10:00:00.000Z"), ("7", "2014-04-01T10:05:00.000Z"), ("7", "2014-04-04T09:00:00.000Z")]
    _ingest(settings, "yoochoose", _clicks(tmp_path, "a.dat", rows))
    assert _ids(settings) == {"7": [DAY], "7@yoochoose:2014-04-04": [dt.date(2014, 4, 4)]}


def test_a_session_across_midnight_in_two_daily_files_stays_one(settings: Settings, tmp_path: Path) -> None:
    _ingest(settings, "yoochoose", _clicks(tmp_path, "a.dat", [("9", "2014-04-01T23:59:00.000Z")]))
    line = _ingest(settings, "yoochoose", _clicks(tmp_path, "b.dat", [("9", "2014-04-02T00:01:00.000Z")]))
    assert "renamed" not in line
    assert _ids(settings) == {"9": [DAY, dt.date(2014, 4, 2)]}
    sequences = _sequences(settings, DAY, dt.date(2014, 4, 2))
    assert sequences.select("session_id", "n_events").rows() == [("9", 2)]


def test_the_same_id_from_two_sources_is_two_sessions_and_keeps_the_cookie(settings: Settings, tmp_path: Path) -> None:
    _ingest(settings, "yoochoose", _clicks(tmp_path, "a.dat", [("1", "2014-04-01T10:00:00.000Z")]))
    log = tmp_path / "log.csv"
    log.write_text("cookie_id,ts,event_type,item_id,session_id\nc1,2014-04-01T11:00:00Z,view,i1,1\n")
    _ingest(settings, "events", log)
    sequences = _sequences(settings, DAY, DAY)
    assert sequences.select("session_id", "cookie_id", "source").rows() == [
        ("1", None, "yoochoose"),
        ("1@events:2014-04-01", "c1", "events"),
    ]


def test_re_delivering_a_batch_gives_the_same_ids(settings: Settings, tmp_path: Path) -> None:
    _ingest(settings, "yoochoose", _clicks(tmp_path, "a.dat", [("5", "2014-04-01T10:00:00.000Z")]))
    later = _clicks(tmp_path, "b.dat", [("5", "2014-04-10T10:00:00.000Z")])
    _ingest(settings, "yoochoose", later)
    first = Lake(settings.lake).read("events").sort("session_id")
    _ingest(settings, "yoochoose", later)
    assert Lake(settings.lake).read("events").sort("session_id").equals(first)


@pytest.mark.parametrize("session_id", ["c2:1396346400000", "x:-5", "a:b:7"])
def test_an_explicit_id_of_the_derived_form_is_quarantined(settings: Settings, tmp_path: Path, session_id: str) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "cookie_id,ts,event_type,item_id,session_id\n"
        f"c1,2014-04-01T10:00:00Z,view,i1,{session_id}\n"
        "c2,2014-04-01T10:00:00Z,view,i2,\n"
        "c3,2014-04-01T10:00:00Z,view,i3,s:x\n"
    )
    settings = settings.with_overrides(bad_row_threshold=1.0)
    _ingest(settings, "events", log)
    quarantine = Lake(settings.lake).read("quarantine")
    assert quarantine.select("line", "reason").rows() == [
        (2, "session_id of the form <cookie_id>:<epoch ms>, kept for sessions cut per cookie")
    ]
    sequences = _sequences(settings, DAY, DAY)
    assert sorted(sequences.get_column("session_id").to_list()) == ["c2:1396346400000", "s:x"]
