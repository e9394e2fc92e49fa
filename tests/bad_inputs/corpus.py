"""The bad-input corpus (issue 8): each case is a small set of raw files and what ingesting
them must give, either a one-line InputError naming the file, or quarantine reasons."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from dataclasses import dataclass, field

import polars as pl

CLICK = "1,2014-04-07T10:51:09.277Z,214536502,0\n"
GOOD = "".join(f"{s},2014-04-07T10:{s % 60:02d}:09.277Z,21453650{s % 7},{s % 12}\n" for s in range(1, 200))
EVENT = {"cookie_id": "c1", "ts": "2014-04-07T10:00:00Z", "event_type": "view", "item_id": "i1"}


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str
    files: dict[str, bytes]
    reasons: frozenset[str] = frozenset()  # quarantine reasons expected (empty: none)
    error: str | None = None  # fragment of the InputError, if the ingest must fail
    duplicates: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def _big_session() -> bytes:
    rows = (f"777,2014-04-07T{10 + i // 36000:02d}:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i % 10}00Z,{i % 500},0\n"
            for i in range(100_000))
    return "".join(rows).encode()


def _parquet(**columns: pl.Series) -> bytes:
    """An event log as Parquet: two good rows' columns, then `columns` replacing or adding some."""
    frame = pl.DataFrame({k: [v, v] for k, v in EVENT.items()}).with_columns(**columns)
    out = io.BytesIO()
    frame.write_parquet(out)
    return out.getvalue()


CSV_EVENTS = "cookie_id,ts,event_type,item_id\r\nc1,2014-04-07T10:00:00Z,view,i1\r\nc2,2014-04-07T10:00:00Z,view,i2\r\n"
JSON_BAD_IDS = [{**EVENT, "cookie_id": 1.5}, {**EVENT, "item_id": True}, {**EVENT, "cookie_id": {"a": 1}}] + [
    {**EVENT, "item_id": n} for n in range(60)
]

MANY_EVENTS = "".join(json.dumps({**EVENT, "item_id": n}) + "\n" for n in range(60)).encode()

CASES = [
    Case("truncated gzip", "yoochoose", {"c.dat.gz": gzip.compress(GOOD.encode() * 50)[:-40]}, error="truncated gzip"),
    Case("corrupt gzip", "yoochoose", {"c.dat.gz": b"\x1f\x8b\x08\x00garbage-not-deflate" * 3}, error="gzip"),
    Case("empty file", "yoochoose", {"c.dat": b""}, error="is empty"),
    Case("wrong delimiter", "yoochoose", {"c.dat": (GOOD + CLICK.replace(",", ";")).encode()},
         reasons=frozenset({"wrong column count (expected 4)"})),
    Case("extra and missing columns", "yoochoose",
         {"c.dat": (GOOD + CLICK.strip() + ",9\n" + "1,2014-04-07T10:51:09.277Z,5\n").encode()},
         reasons=frozenset({"wrong column count (expected 4)"})),
    Case("header in headerless file", "yoochoose",
         {"c.dat": ("session_id,timestamp,item_id,category\n" + GOOD).encode()},
         reasons=frozenset({"header line in a headerless file"})),
    Case("non-UTF-8 bytes", "yoochoose", {"c.dat": GOOD.encode() + b"1,2014-04-07T10:51:09.277Z,5,caf\xe9\n"},
         reasons=frozenset({"non-UTF-8 bytes"})),
    Case("NUL bytes", "yoochoose", {"c.dat": GOOD.encode() + b"1,2014-04-07T10:51:09.277Z,5\x00,0\n"},
         reasons=frozenset({"NUL byte"})),
    Case("blank lines", "yoochoose", {"c.dat": (GOOD + "\n\r\n").encode()}, reasons=frozenset({"blank line"})),
    Case("negative and overflowing ids", "yoochoose",
         {"c.dat": (GOOD + "-5,2014-04-07T10:51:09.277Z,5,0\n" + CLICK.replace("214536502", "9" * 21)).encode()},
         reasons=frozenset({"unparsable session_id", "unparsable item_id"})),
    Case("unparsable timestamps", "yoochoose", {"c.dat": (GOOD + "1,07.04.2014 10:51,5,0\n").encode()},
         reasons=frozenset({"unparsable timestamp"})),
    Case("1970 and future timestamps", "yoochoose",
         {"c.dat": (GOOD + "1,1970-01-01T00:00:00.000Z,5,0\n1,2031-01-01T00:00:00.000Z,5,0\n").encode()},
         reasons=frozenset({"impossible timestamp"})),
    Case("out-of-order events", "yoochoose", {"c.dat": "".join(reversed(GOOD.splitlines(True))).encode()}),
    Case("duplicate events", "yoochoose", {"c.dat": (GOOD + CLICK + CLICK).encode()}, duplicates=1),
    Case("a session with 100k events", "yoochoose", {"c.dat": _big_session()}),
    Case("prices with currency symbols", "yoochoose",
         {"c.dat": GOOD.encode(), "b.dat": b"1,2014-04-07T10:59:09.277Z,5,$12.50,1\n2,2014-04-07T10:59:09Z,5,12,1\n"},
         reasons=frozenset({"unparsable price"}), extra={"buys": ["b.dat"]}),
    Case("JSON lines that are not objects", "events",
         {"e.jsonl": "".join(json.dumps(o) + "\n" for o in [*([EVENT] * 40), [1], "x"]).encode()},
         reasons=frozenset({"JSON line is not an object"}), duplicates=39),
    Case("mixed formats in one folder", "events",
         {"e.jsonl": (json.dumps(EVENT) + "\n").encode(), "clicks.dat": GOOD.encode()},
         error="cannot tell the event-log format"),
    Case("YOOCHOOSE file given as events CSV", "events", {"e.csv": GOOD.encode()}, error="no column"),
    Case("byte-order mark before an events CSV header", "events", {"e.csv": b"\xef\xbb\xbf" + CSV_EVENTS.encode()}),
    Case("byte-order mark before YOOCHOOSE clicks", "yoochoose", {"c.dat": b"\xef\xbb\xbf" + GOOD.encode()}),
    Case("JSON ids that are floats, booleans or objects", "events",
         {"e.jsonl": "".join(json.dumps(o) + "\n" for o in JSON_BAD_IDS).encode()},
         reasons=frozenset({"cookie_id is not a string or an integer", "item_id is not a string or an integer"})),
    Case("Parquet ts that is a duration", "events", {"e.parquet": _parquet(ts=pl.Series([dt.timedelta(1)] * 2))},
         error="none of its 2 rows .*unparsable ts"),
    Case("Parquet ts that is a time of day", "events", {"e.parquet": _parquet(ts=pl.Series([dt.time(10)] * 2))},
         error="none of its 2 rows .*unparsable ts"),
    Case("Parquet id of non-UTF-8 bytes", "events",
         {"e.parquet": _parquet(cookie_id=pl.Series([b"c1", b"\xff\xfe"])), "f.jsonl": MANY_EVENTS},
         reasons=frozenset({"non-UTF-8 bytes"})),
    Case("Parquet with an unused nested column", "events",
         {"e.parquet": _parquet(context=pl.Series([{"page": [1, 2]}, {"page": []}]))}, duplicates=1),
    Case("Parquet with a float id column", "events", {"e.parquet": _parquet(item_id=pl.Series([1.0, 2.0]))},
         error="none of its 2 rows .*item_id is not a string or an integer"),
    Case("gzip truncated after many lines", "yoochoose", {"c.dat.gz": gzip.compress(GOOD.encode() * 400)[:-5000]},
         error=r"truncated gzip.* after line [1-9]"),
    Case("a file without line breaks", "yoochoose", {"c.dat": b"1," * (1 << 20)}, error="per-line limit"),
]
