"""Retailrocket events.csv reads as a cookie event log: visitor = cookie, epoch-ms timestamps,
its event names mapped to the canonical ones, bad rows quarantined, a wrong header refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.ingest.raw_fields import TimeWindow
from clickstream.pipeline.ingest.read_retailrocket import read_retailrocket

WINDOW = TimeWindow.for_ingestion(dt.date(2016, 1, 1))
HEADER = "timestamp,visitorid,event,itemid,transactionid\n"


def test_given_retailrocket_rows_then_canonical_events_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        HEADER + "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n"
        "1433221999827,111016,refund,318965,\n"
        "soon,1,view,2,\n"
        "1433221999827,-4,view,2,\n"
        "1433221999827,4,view,,\n"
    )
    chunks = list(read_retailrocket(path, WINDOW))
    events = pl.concat([c.events for c in chunks])
    rejects = pl.concat([c.rejects for c in chunks])
    assert events.select("cookie_id", "event_type", "item_id").rows() == [
        ("257597", "view", "355908"),
        ("992329", "add_to_cart", "248676"),
        ("111016", "purchase", "318965"),
        ("111016", "other", "318965"),
    ]
    assert events["ts"][0] == dt.datetime(2015, 6, 2, 5, 2, 12, 117000, tzinfo=dt.UTC)
    assert set(events["source"]) == {"retailrocket"} and events["session_id"].null_count() == 4
    assert rejects.select("line", "reason").rows() == [
        (6, "unparsable timestamp"),
        (7, "unparsable visitorid"),
        (8, "missing itemid"),
    ]


def test_given_another_header_then_input_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("ts,visitor,event,item\n1,2,view,3\n")
    with pytest.raises(InputError, match="expected 'timestamp,visitorid,event,itemid,transactionid'") as error:
        list(read_retailrocket(path, WINDOW))
    assert str(path) in str(error.value)
