"""Cookie event logs in JSON Lines, CSV and Parquet (plain or .gz) become the same canonical
events; bad rows are quarantined with their reason; unreadable files are InputErrors."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.ingest.raw_fields import ParsedChunk, TimeWindow
from clickstream.pipeline.ingest.read_events import read_event_log

WINDOW = TimeWindow.for_ingestion(dt.date(2024, 1, 1))
ROWS = [
    {"cookie_id": "c1", "ts": "2023-05-01T10:00:00Z", "event_type": "view", "item_id": "i1", "category": "3"},
    {"cookie_id": "c1", "ts": "2023-05-01T12:00:05+02:00", "event_type": "add_to_cart", "item_id": "i1"},
    {"cookie_id": "c2", "ts": 1682935200000, "event_type": "purchase", "item_id": "i2", "price": 9.5, "quantity": 2},
    {"cookie_id": "c3", "ts": "2023-05-01T10:00:00Z", "event_type": "wishlist", "item_id": "i3", "session_id": "s9"},
]
EXPECTED = [
    ("c1", dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), "view", "i1", "3", None, None, None),
    ("c1", dt.datetime(2023, 5, 1, 10, 0, 5, tzinfo=dt.UTC), "add_to_cart", "i1", None, None, None, None),
    ("c2", dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), "purchase", "i2", None, 9.5, 2, None),
    ("c3", dt.datetime(2023, 5, 1, 10, tzinfo=dt.UTC), "other", "i3", None, None, None, "s9"),
]
GOOD_FIELDS = '"cookie_id": "c", "ts": 1682935200000, "event_type": "x", "item_id": 1'
COLUMNS = ["cookie_id", "ts", "event_type", "item_id", "category", "price", "quantity", "session_id"]


def parse(path: Path) -> ParsedChunk:
    chunks = list(read_event_log(path, WINDOW))
    return ParsedChunk(pl.concat([c.events for c in chunks]), pl.concat([c.rejects for c in chunks]))


def write(path: Path, rows: list[dict]) -> Path:
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    if kind == "parquet":
        pl.DataFrame([{k: None if r.get(k) is None else str(r[k]) for k in COLUMNS} for r in rows]).write_parquet(path)
    else:
        if kind == "csv":
            text = ",".join(COLUMNS) + "\n" + "".join(",".join(str(r.get(k, "")) for k in COLUMNS) + "\n" for r in rows)
        else:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        data = text.encode()
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["log.jsonl", "log.ndjson", "log.csv", "log.csv.gz", "log.json.gz", "log.parquet"])
def test_given_each_format_then_the_same_canonical_events(tmp_path: Path, name: str) -> None:
    parsed = parse(write(tmp_path / name, ROWS))
    assert parsed.rejects.height == 0
    assert parsed.events.select(COLUMNS).rows() == EXPECTED
    assert set(parsed.events["source"]) == {"events"} and parsed.events["labelled"].all()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "JSON line is not an object"),
        ('"just a string"', "JSON line is not an object"),
        ("{not json", "unparsable JSON"),
        ('{"ts": "2023-05-01T10:00:00Z", "event_type": "view", "item_id": "i"}', "missing cookie_id"),
        ('{"cookie_id": "c", "event_type": "view", "item_id": "i"}', "missing ts"),
        ('{"cookie_id": "c", "ts": "yesterday", "event_type": "view", "item_id": "i"}', "unparsable ts"),
        ('{"cookie_id": "c", "ts": "2023-05-01T10:00:00", "event_type": "view", "item_id": "i"}', "unparsable ts"),
        ('{"cookie_id": "c", "ts": 0, "event_type": "view", "item_id": "i"}', "impossible timestamp"),
        ('{"cookie_id": "c", "ts": "2023-05-01T10:00:00Z", "item_id": "i"}', "missing event_type"),
        ('{"cookie_id": "c", "ts": "2023-05-01T10:00:00Z", "event_type": "view"}', "missing item_id"),
        ("{" + GOOD_FIELDS + ', "price": "€5"}', "unparsable price"),
        ("{" + GOOD_FIELDS + ', "quantity": "-1"}', "unparsable quantity"),
    ],
)
def test_given_a_bad_json_line_then_it_is_quarantined_with_its_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    parsed = parse(path)
    assert parsed.events.height == 1
    assert parsed.rejects.rows() == [(2, line, reason)]


def test_given_a_bad_parquet_row_then_its_row_number_and_json_are_quarantined(tmp_path: Path) -> None:
    parsed = parse(write(tmp_path / "log.parquet", [ROWS[0], {**ROWS[1], "ts": "soon"}]))
    ((line, raw, reason),) = parsed.rejects.rows()
    assert (line, reason) == (2, "unparsable ts")
    assert json.loads(raw)["ts"] == "soon"


def test_given_quoted_csv_fields_then_commas_inside_stay_in_the_field(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text('cookie_id,ts,event_type,item_id,category\n"c,1",1682935200000,view,i1,"Shoes, men"\n')
    assert parse(path).events.select("cookie_id", "category").rows() == [("c,1", "Shoes, men")]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("log.csv", b"cookie,when,what\nc,1,view\n", "no column cookie_id, ts"),
        ("log.txt", b"{}\n", "cannot tell the event-log format"),
        ("log.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("log.csv", b"\n", "line 1 is not a CSV header"),
    ],
)
def test_given_an_unusable_event_log_then_input_error(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment):
        parse(path)


JSON_VALUES = st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=2)
OBJECTS = st.dictionaries(st.sampled_from([*COLUMNS, "extra"]), JSON_VALUES, max_size=9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(OBJECTS | JSON_VALUES, min_size=1, max_size=20))
def test_given_arbitrary_json_lines_then_every_line_is_an_event_or_a_reject(tmp_path: Path, objects: list) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    parsed = parse(path)
    assert parsed.events.height + parsed.rejects.height == len(objects)
    assert parsed.events["cookie_id"].null_count() == 0 and parsed.events["ts"].null_count() == 0
