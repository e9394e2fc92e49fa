"""The bad-input corpus (issue 8): each case is a small set of raw files and what ingesting
them must give, either a one-line InputError naming the file, or quarantine reasons."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

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
]
