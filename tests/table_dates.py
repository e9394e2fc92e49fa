"""A lake's committed content per (table, date), read through the Delta log, for the crash-safety
and idempotency tests: "is this date the previous content or the new one", "did every date of a
table come from the same run".

Hashes are `lake_content.content_hash` of each date's rows (a multiset: blind to row order and
file layout, `scored_at` left out), so two lakes that reached the same content by different
histories (a killed run then a re-run, or one clean run) compare equal.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lake_content import content_hash

from clickstream.pipeline.core.lake import TABLES, Lake

Contents = dict[tuple[str, dt.date], str]


def table_contents(root: str | Path, tables: tuple[str, ...] = TABLES) -> Contents:
    """The content hash of every date of `tables` that holds rows, at each table's latest version."""
    lake = Lake(root)
    contents: Contents = {}
    for table in tables:
        frame = lake.read(table)
        for (day,), part in frame.partition_by("date", as_dict=True, include_key=False).items():
            contents[table, day] = content_hash(part)
    return contents


def of_table(contents: Contents, table: str) -> dict[dt.date, str]:
    """The dates of one table in `contents` and their hashes."""
    return {day: digest for (name, day), digest in contents.items() if name == table}


def side(after: Contents, old: Contents, new: Contents, table: str) -> str:
    """Which of two contents, "old" or "new", `table` holds in `after`, after asserting that each of
    its dates is wholly the old or wholly the new content and that all of them agree (one version
    of the table, never a mix of two runs). `old` and `new` must differ on every date of the table."""
    dates = sorted({day for (name, day) in old.keys() | new.keys() | after.keys() if name == table})
    assert dates, f"{table} holds no dates before or after"
    sides = {}
    for day in dates:
        key = (table, day)
        assert old.get(key) != new.get(key), f"{table} {day}: the old and new content are equal, the check is void"
        got = after.get(key)
        assert got in {old.get(key), new.get(key)}, f"{table} {day} is neither the previous nor the new content"
        sides[day] = "old" if got == old.get(key) else "new"
    assert len(set(sides.values())) == 1, f"{table} mixes two versions: {sides}"
    return next(iter(sides.values()))


def assert_readable(root: str | Path) -> None:
    """Every table opens, lists its history and reads whole: the rows read are those its log
    commits (files of an interrupted write that the log does not name are never read)."""
    lake = Lake(root)
    for table in TABLES:
        if lake.version(table) is None:
            continue
        assert lake.history(table), table
        logged = sum(lake.rows_per_date(table).values())
        assert lake.read(table).height == logged, f"{table}: rows read differ from the rows its log commits"
