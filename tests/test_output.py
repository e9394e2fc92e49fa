"""Output formats for analysts: aligned table, injection-safe CSV, JSON records, Parquet."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.serve.output import format_csv, format_json, format_table, write_output


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "session_id": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tt", "\rr", "plain", None],
            "score": [0.5, 0.123456, 1.0, 0.0, 0.25, 0.75, 0.999, None],
            "n_events": [1, 22, 333, 4, 5, 6, 7, 8],
            "session_start": [dt.datetime(2014, 4, 1, 10, 0, 5, tzinfo=dt.UTC)] * 8,
            "items": [["a", "b"], [], None, ["c"], ["d"], ["e"], ["f"], ["g"]],
        },
        schema_overrides={"score": pl.Float32, "n_events": pl.Int32},
    )


def test_given_formula_like_ids_when_written_as_csv_then_every_such_cell_starts_with_a_quote() -> None:
    rows = list(csv.DictReader(io.StringIO(format_csv(_frame()))))

    ids = [row["session_id"] for row in rows]
    assert ids[:6] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "'\tt", "'\rr"]
    assert ids[6:] == ["plain", ""]
    assert rows[0]["score"] == "0.5" and rows[2]["n_events"] == "333"  # numbers stay numbers
    assert rows[0]["items"] == '["a","b"]'  # nested values as JSON text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=20))
def test_given_any_text_when_written_as_csv_then_no_cell_starts_a_formula_and_the_rest_is_kept(
    values: list[str],
) -> None:
    cells = [row[0] for row in csv.reader(io.StringIO(format_csv(pl.DataFrame({"v": values}))))][1:]

    assert len(cells) == len(values)
    for cell, value in zip(cells, values, strict=True):
        assert not cell[:1] or cell[0] not in "=+-@\t\r"
        assert cell in (value, f"'{value}")


def test_given_a_frame_when_written_as_a_table_then_columns_line_up_and_numbers_align_right() -> None:
    lines = format_table(_frame()).splitlines()

    header, rule, body = lines[0], lines[1], lines[2:]
    assert header.split() == ["session_id", "score", "n_events", "session_start", "items"]
    assert set(rule) <= {"-", " "} and len(body) == 8
    spans = [match.span() for match in re.finditer(r"-+", rule)]
    column = [[line[a:b] for a, b in spans[:4]] for line in body]
    assert [row[1] for row in column] == [
        "0.5000", "0.1235", "1.0000", "0.0000", "0.2500", "0.7500", "0.9990", "      "
    ]  # fmt: skip
    assert [row[2] for row in column][:3] == ["       1", "      22", "     333"]
    assert column[0][0].rstrip() == '=HYPERLINK("http://x")' and column[4][0].rstrip() == "\\tt"
    assert column[0][3] == "2014-04-01 10:00:05"


def test_given_json_when_parsed_then_it_is_one_record_per_row_with_nulls() -> None:
    frame = _frame()
    records = json.loads(format_json(frame))

    assert len(records) == frame.height
    assert records[0]["session_id"] == frame["session_id"][0]
    assert records[7]["session_id"] is None and records[1]["items"] == []


def test_given_parquet_and_a_file_when_written_then_it_round_trips_exactly(tmp_path: Path) -> None:
    frame = _frame()
    out = tmp_path / "scores.parquet"

    summary = write_output(frame, "parquet", out)

    assert pl.read_parquet(out).equals(frame)
    assert summary == f"8 rows x 5 columns written to {out} (parquet)"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no temporary file left


def test_given_parquet_without_a_file_when_written_then_a_one_line_error_asks_for_out() -> None:
    with pytest.raises(ClickstreamError, match="--out"):
        write_output(_frame(), "parquet", None)


def test_given_csv_to_stdout_when_written_then_stdout_holds_only_data_and_the_summary_goes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert write_output(_frame(), "csv", None) == ""

    captured = capsys.readouterr()
    assert captured.out == format_csv(_frame())
    assert captured.err.strip() == "8 rows x 5 columns"


def test_given_a_table_to_a_file_when_written_then_the_file_holds_the_table(tmp_path: Path) -> None:
    out = tmp_path / "t.txt"

    write_output(_frame(), "table", out)

    assert out.read_text() == format_table(_frame())


def test_given_a_missing_folder_when_writing_then_a_one_line_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(ClickstreamError, match="does not exist"):
        write_output(_frame(), "csv", tmp_path / "nowhere" / "x.csv")
