"""YOOCHOOSE clicks and buys: valid rows become the right canonical events, every other line
is quarantined with its reason, and no line is ever lost."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream.pipeline.ingest import raw_fields
from clickstream.pipeline.ingest.raw_fields import (
    ZULU_FORMAT,
    ParsedChunk,
    TimeWindow,
    is_numeric_id,
    is_yoochoose_category,
    zulu_timestamp,
)
from clickstream.pipeline.ingest.read_yoochoose import read_buys, read_clicks

WINDOW = TimeWindow.for_ingestion(dt.date(2015, 1, 1))
CATEGORIES = st.sampled_from(["0", "1", "12", "S", "2075352000", "12345678"])
MOMENTS = st.datetimes(dt.datetime(2014, 4, 1), dt.datetime(2014, 9, 30)).map(
    lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000, tzinfo=dt.UTC)
)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse(path: Path, reader: object = read_clicks) -> ParsedChunk:
    chunks = list(reader(path, WINDOW, labelled=False) if reader is read_clicks else reader(path, WINDOW))
    return ParsedChunk(pl.concat([c.events for c in chunks]), pl.concat([c.rejects for c in chunks]))


@HYPOTHESIS
@given(rows=st.lists(st.tuples(st.integers(0, 10**18 - 1), MOMENTS, st.integers(0, 10**12), CATEGORIES), min_size=1))
def test_given_valid_click_rows_then_each_is_a_view_event_with_the_same_values(
    tmp_path: Path, rows: list[tuple[int, dt.datetime, int, str]]
) -> None:
    path = tmp_path / "clicks.dat"
    path.write_text("".join(f"{s},{stamp(t)},{i},{c}\n" for s, t, i, c in rows))
    parsed = parse(path)
    assert parsed.rejects.height == 0
    expected = [(str(s), t, "view", str(i), c) for s, t, i, c in rows]
    assert parsed.events.select("session_id", "ts", "event_type", "item_id", "category").rows() == expected
    assert parsed.events["source"].unique().to_list() == ["yoochoose"]


JUNK = st.text(st.sampled_from("0123456789,-:.TZS xé\x00\t\r"), max_size=40).map(str.encode) | st.binary(max_size=30)


@HYPOTHESIS
@given(lines=st.lists(JUNK, min_size=1, max_size=30))
def test_given_junk_lines_then_each_is_parsed_or_quarantined_never_lost(tmp_path: Path, lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b"").replace(b"\r", b"") for line in lines]
    lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")  # a byte-order mark starting the file is dropped
    path = tmp_path / "clicks.dat"
    path.write_bytes(b"\n".join(lines) + b"\n")
    parsed = parse(path)
    rejected = parsed.rejects["line"].to_list()
    assert parsed.events.height + parsed.rejects.height == len(lines)
    assert len(set(rejected)) == len(rejected) and set(rejected) <= set(range(1, len(lines) + 1))
    assert parsed.rejects["reason"].null_count() == 0
    assert parsed.rejects["raw"].to_list() == [lines[n - 1].decode("utf-8", "replace") for n in rejected]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "blank line"),
        ("session_id,timestamp,item_id,category", "header line in a headerless file"),
        ("1;2014-04-07T10:51:09.277Z;214536502;0", "wrong column count (expected 4)"),
        ("1,2014-04-07T10:51:09.277Z,214536502", "wrong column count (expected 4)"),
        ("1,2014-04-07T10:51:09.277Z,214536502,0,7", "wrong column count (expected 4)"),
        (",2014-04-07T10:51:09.277Z,214536502,0", "missing session_id"),
        ("-1,2014-04-07T10:51:09.277Z,214536502,0", "unparsable session_id"),
        ("99999999999999999999,2014-04-07T10:51:09.277Z,214536502,0", "unparsable session_id"),
        ("1,,214536502,0", "missing timestamp"),
        ("1,07/04/2014 10:51,214536502,0", "unparsable timestamp"),
        ("1,1970-01-01T00:00:00.000Z,214536502,0", "impossible timestamp"),
        ("1,2099-01-01T00:00:00.000Z,214536502,0", "impossible timestamp"),
        ("1,2014-04-07T10:51:09.277Z,,0", "missing item_id"),
        ("1,2014-04-07T10:51:09.277Z,abc,0", "unparsable item_id"),
        ("1,2014-04-07T10:51:09.277Z,214536502,", "missing category"),
        ("1,2014-04-07T10:51:09.277Z,214536502,13", "unparsable category"),
        ("1\x00,2014-04-07T10:51:09.277Z,214536502,0", "NUL byte"),
    ],
)
def test_given_a_bad_click_line_then_it_is_quarantined_with_its_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "clicks.dat"
    path.write_text(f"1,2014-04-07T10:51:09.277Z,214536502,0\n{line}\n")
    parsed = parse(path)
    assert parsed.events.height == 1
    assert parsed.rejects.rows() == [(2, line, reason)]


def test_given_buys_then_purchases_carry_price_and_quantity_and_zero_means_unknown(tmp_path: Path) -> None:
    path = tmp_path / "buys.dat"
    path.write_text(
        "420374,2014-04-06T18:44:58.314Z,214537888,12462,1\n"
        "420374,2014-04-06T18:44:58.314Z,214537850,0,0\n"
        "420375,2014-04-06T18:44:58.314Z,214537850,$12,1\n"
        "420376,2014-04-06T18:44:58.314Z,214537850,12,1.5\n"
    )
    parsed = parse(path, read_buys)
    assert parsed.events.select("event_type", "price", "quantity", "labelled").rows() == [
        ("purchase", 12462.0, 1, True),
        ("purchase", None, None, True),
    ]
    assert parsed.rejects.select("line", "reason").rows() == [(3, "unparsable price"), (4, "unparsable quantity")]


def _as_polars_reads_it(texts: list[str | None]) -> pl.Series:
    return pl.Series("t", texts, dtype=pl.String).str.to_datetime(
        ZULU_FORMAT, time_unit="us", time_zone="UTC", strict=False
    )


STAMPS = st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)).map(
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
)
NEAR_STAMPS = st.text(st.sampled_from("0123456789-T:.Z "), min_size=20, max_size=26)
EDITED_STAMPS = st.tuples(STAMPS, st.integers(0, 23), st.sampled_from("0123456789-T:.Z x")).map(
    lambda s: s[0][: s[1]] + s[2] + s[0][s[1] + 1 :]
)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(STAMPS | NEAR_STAMPS | EDITED_STAMPS | st.none() | st.text(max_size=30), max_size=40))
def test_given_any_texts_then_the_fast_timestamp_parse_equals_polars_to_datetime(texts: list[str | None]) -> None:
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    assert frame.select(zulu_timestamp(pl.col("t")))["t"].equals(_as_polars_reads_it(texts))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(STAMPS | EDITED_STAMPS, min_size=1, max_size=20), block=st.integers(1, 7))
def test_given_texts_over_several_blocks_then_the_fast_parse_equals_one_block(
    monkeypatch: pytest.MonkeyPatch, texts: list[str], block: int
) -> None:
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    monkeypatch.setattr(raw_fields, "ZULU_BLOCK", block)
    assert frame.select(zulu_timestamp(pl.col("t")))["t"].equals(_as_polars_reads_it(texts))


ID_TEXTS = st.text(st.sampled_from("0123456789+-Se. x\u0663"), max_size=22) | st.integers(0, 10**22).map(str)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(ID_TEXTS | st.none(), max_size=30))
def test_given_any_texts_then_the_id_and_category_checks_equal_their_regular_expressions(
    texts: list[str | None],
) -> None:
    text = pl.col("t")
    checks = pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(
        is_numeric_id(text).alias("id"),
        text.str.contains(r"^[0-9]{1,18}$").alias("id_regex"),
        is_yoochoose_category(text).alias("category"),
        text.str.contains(r"^(S|[0-9]|1[0-2]|[0-9]{8,10})$").alias("category_regex"),
    )
    assert checks["id"].equals(checks["id_regex"])
    assert checks["category"].equals(checks["category_regex"])


@pytest.mark.parametrize(
    "text",
    ["2016-02-29T23:59:59.999Z", "2015-02-29T00:00:00.000Z", "2014-04-31T00:00:00.000Z", "2014-04-07T24:00:00.000Z",
     "2014-04-07T23:60:00.000Z", "2014-04-07T23:59:60.000Z", "2014-00-07T10:51:09.277Z", "2014-13-07T10:51:09.277Z",
     "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00.000Z", "2014-04-07T10:51:09Z", "2014-04-07T10:51:09.277123Z",
     "2014-04-07 10:51:09.277Z", "1969-12-31T23:59:59.999Z"],
)  # fmt: skip
def test_given_a_calendar_edge_then_the_fast_timestamp_parse_equals_polars_to_datetime(text: str) -> None:
    texts = ["2014-04-07T10:51:09.277Z", text, None]
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    assert frame.select(zulu_timestamp(pl.col("t")))["t"].equals(_as_polars_reads_it(texts))
