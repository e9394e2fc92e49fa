"""Session-hash buckets: a stable hash, every session and cookie in one bucket, and the same
sequences, scores and cookie rollup from one bucket as from many, built whole or bucket by bucket."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from clickstream.features.sequences import build_sequences
from clickstream.pipeline.core.buckets import bucket_of
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import InputError, LakeFormatError
from clickstream.pipeline.core.lake import BUCKETED, Lake
from clickstream.pipeline.ingest.ingest import ingest_files
from clickstream.pipeline.serve.scoring import score_dates
from clickstream.pipeline.synthetic.generate import generate_logs

TODAY = dt.date(2015, 1, 1)
START = dt.date(2014, 4, 1)


def test_the_bucket_is_xxh3_of_the_cookie_else_the_session_id() -> None:
    keys = pl.DataFrame({"cookie_id": ["a", None, "c42", "a"], "session_id": [None, "5", "x", "y"]})
    # XXH3-64 with seed 0 (the published test vector of "a" is 0xE6C632B61E964E1F), modulo the buckets
    assert keys.select(bucket_of(7)).item(0, 0) == 0xE6C632B61E964E1F % 7
    buckets = keys.select(bucket_of(16)).to_series().to_list()
    assert buckets == [0xE6C632B61E964E1F % 16, buckets[1], buckets[2], buckets[0]]  # a cookie's rows: one bucket
    assert keys.with_columns(bucket_of(1)).get_column("bucket").to_list() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        bucket_of(0)


def _logs(root: Path) -> list[tuple[str, list[Path], list[Path]]]:
    """YOOCHOOSE clicks and buys, and a cookie event log, over three days (sessions cross midnight,
    cookies come back)."""
    generate_logs(root / "yc", sessions=1500, days=3, start_date=START, seed=11)
    generate_logs(root / "ev", sessions=1500, days=3, start_date=START, seed=12, fmt="events")
    cookie_logs = sorted(path for path in (root / "ev").iterdir() if path.name.startswith("events"))
    return [
        ("yoochoose", [root / "yc" / "yoochoose-clicks.dat"], [root / "yc" / "yoochoose-buys.dat"]),
        ("events", cookie_logs, []),
    ]


def _lake_with(settings: Settings, buckets: int, logs: list[tuple[str, list[Path], list[Path]]]) -> Settings:
    lake_settings = dataclasses.replace(settings, lake=f"{settings.lake}-{buckets}", buckets=buckets)
    for fmt, files, buys in logs:
        ingest_files(lake_settings, fmt, files, buys, ingestion_date=TODAY)
    return lake_settings


def _rows(settings: Settings, table: str, drop: tuple[str, ...] = ()) -> pl.DataFrame:
    frame = Lake(settings.lake).read(table).drop("bucket", *drop)
    return frame.with_columns(pl.col(pl.List(pl.Categorical)).cast(pl.List(pl.String))).sort(frame.columns[:3])


def _assert_same_scores(left: pl.DataFrame, right: pl.DataFrame) -> None:
    """Row for row the same; score columns to float32 rounding: the model's matrix products group
    other sessions with each one when the buckets differ, which can move the last bit."""
    scores = [name for name in left.columns if "score" in name]
    assert left.drop(scores).equals(right.drop(scores))
    for name in scores:
        assert (left[name] - right[name]).abs().max() <= 1e-6, name


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, list[Path], list[Path]]]:
    return _logs(tmp_path_factory.mktemp("logs"))


def test_one_bucket_and_four_give_the_same_sequences_and_scores_row_for_row(
    champion_settings: Settings, logs: list[tuple[str, list[Path], list[Path]]]
) -> None:
    one, four = (_lake_with(champion_settings, n, logs) for n in (1, 4))
    for lake_settings in (one, four):
        build_sequences(lake_settings, None, None)
        score_dates(lake_settings, START, START + dt.timedelta(days=3))

    assert _rows(one, "events", drop=("batch",)).equals(_rows(four, "events", drop=("batch",)))
    assert _rows(one, "sequences").equals(_rows(four, "sequences"))
    _assert_same_scores(_rows(one, "scores", drop=("scored_at",)), _rows(four, "scores", drop=("scored_at",)))
    _assert_same_scores(_rows(one, "cookie_intent"), _rows(four, "cookie_intent"))
    lake = Lake(four.lake)
    sequences = lake.read("sequences")
    assert sequences.get_column("bucket").n_unique() == 4
    assert sequences.get_column("source").unique().sort().to_list() == ["events", "yoochoose"]
    # a cookie's sessions, and its rollup, live in one bucket; no session is in two
    cookies = sequences.filter(pl.col("cookie_id").is_not_null()).group_by("cookie_id")
    assert cookies.agg(pl.col("bucket").n_unique()).get_column("bucket").max() == 1
    assert cookies.len().get_column("len").max() > 1  # cookies that came back
    assert sequences.get_column("session_id").is_unique().all()
    intent = lake.read("cookie_intent").join(sequences.select("cookie_id", "bucket").unique(), on="cookie_id")
    assert intent.filter(pl.col("bucket") != pl.col("bucket_right")).is_empty()
    # sessions that crossed midnight are whole in the day they started
    assert (sequences.get_column("session_end").dt.date() > sequences.get_column("date")).any()


def test_building_and_scoring_bucket_by_bucket_equals_doing_all_at_once(
    champion_settings: Settings, logs: list[tuple[str, list[Path], list[Path]]]
) -> None:
    whole = _lake_with(champion_settings, 3, logs)
    build_sequences(whole, None, None)
    score_dates(whole, START, START + dt.timedelta(days=3))
    by_bucket = dataclasses.replace(whole, lake=f"{whole.lake}-by-bucket")
    for fmt, files, buys in logs:
        ingest_files(by_bucket, fmt, files, buys, ingestion_date=TODAY)
    for bucket in range(3):
        build_sequences(by_bucket, START - dt.timedelta(days=1), START + dt.timedelta(days=3), bucket)
    for bucket in (2, 0, 1):
        score_dates(by_bucket, START, START + dt.timedelta(days=3), bucket=bucket)

    assert _rows(whole, "sequences").equals(_rows(by_bucket, "sequences"))
    _assert_same_scores(_rows(whole, "scores", drop=("scored_at",)), _rows(by_bucket, "scores", drop=("scored_at",)))
    _assert_same_scores(_rows(whole, "cookie_intent"), _rows(by_bucket, "cookie_intent"))
    # a bucket's run replaced only its own partitions
    commits = [c for c in Lake(by_bucket.lake).history("sequences") if c.stage == "sequences"]
    assert sorted(c.metadata["bucket"] for c in commits) == ["0", "1", "2"]


def test_the_bucket_count_is_fixed_when_the_tables_are_created(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("cookie_id,ts,event_type,item_id\nc1,2014-04-01T10:00:00Z,view,i1\n")
    ingest_files(dataclasses.replace(settings, buckets=4), "events", [log], ingestion_date=TODAY)
    lake = Lake(settings.lake)
    assert lake.buckets == 4
    assert "buckets=4" in (lake.table("events").metadata().description or "")
    build_sequences(settings, None, None)  # the sequences table takes the lake's count
    assert Lake(settings.lake).table("sequences").metadata().partition_columns == ["date", "bucket"]
    assert set(BUCKETED) == {"events", "sequences", "scores", "cookie_intent"}
    with pytest.raises(LakeFormatError, match=r"has 4 bucket\(s\), fixed when its tables were created"):
        _ = Lake(settings.lake, buckets=8).buckets
    with pytest.raises(InputError, match=r"bucket 4 is not one of .* buckets 0..3"):
        build_sequences(settings, None, None, bucket=4)
