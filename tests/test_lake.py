"""The lake keeps its promises on a local disk and on S3 alike: a partition is replaced
atomically, temporary files are never read, scans carry the partition date, and locks
keep writers apart, including after a writer is killed with SIGKILL.

The S3 lake runs against moto's S3 server on 127.0.0.1; endpoint and credentials reach
s3fs, polars and the child processes only through the AWS_* environment."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from clickstream.pipeline.core import lake as lake_module
from clickstream.pipeline.core.errors import LakePathError, LockedError
from clickstream.pipeline.core.lake import Lake

DAY = dt.date(2024, 3, 1)
DEADLINE_S = 60.0


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """An empty lake on local disk or in a fresh S3 bucket."""
    if request.param == "local":
        return Lake(tmp_path / "lake")
    return Lake(f"{request.getfixturevalue('s3_bucket')}/root")


def _frame(version: int, rows: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"version": [version] * rows, "x": list(range(rows))})


def _names_in(lake: Lake, table: str, day: dt.date) -> list[str]:
    """Every object under the partition, committed or not."""
    return sorted(p.rsplit("/", 1)[-1] for p in lake.fs.find(lake.partition_dir(table, day)))


# ---- layout and reading -----------------------------------------------------


def test_given_partitions_on_several_days_when_scanned_then_rows_carry_their_date(lake: Lake) -> None:
    for offset in range(3):
        lake.write_partition("events", DAY + dt.timedelta(days=offset), _frame(offset, rows=offset + 1))

    everything = lake.scan("events").collect().sort("date", "x")
    window = lake.scan("events", start=DAY + dt.timedelta(days=1), end=DAY + dt.timedelta(days=1)).collect()

    assert everything.schema["date"] == pl.Date
    assert everything.group_by("date").len().sort("date")["len"].to_list() == [1, 2, 3]
    assert window["date"].unique().to_list() == [DAY + dt.timedelta(days=1)]
    assert window["version"].to_list() == [1, 1]
    assert lake.dates("events") == [DAY + dt.timedelta(days=d) for d in range(3)]


def test_given_an_empty_table_when_scanned_then_there_is_nothing(lake: Lake) -> None:
    assert lake.scan("sequences") is None
    assert lake.dates("sequences") == []


def test_given_a_written_partition_then_another_lake_object_sees_it_at_once(lake: Lake) -> None:
    reader = Lake(lake.root)
    assert reader.dates("scores") == []  # a listing that a cache could keep

    lake.write_partition("scores", DAY, _frame(1))

    assert reader.dates("scores") == [DAY]
    assert reader.read_file(reader.partition_files("scores", DAY)[0]).equals(_frame(1))


def test_paths_cannot_leave_the_lake_through_table_or_file_names(lake: Lake) -> None:
    with pytest.raises(LakePathError):
        lake.partition_file("events", DAY, "../../escape")
    with pytest.raises(LakePathError):
        lake.partition_file("events", DAY, ".hidden")
    with pytest.raises(LakePathError):
        lake.table_dir("../etc")


# ---- atomic writes ----------------------------------------------------------


def test_given_a_partition_when_rewritten_then_it_holds_only_the_new_content_and_no_temp_files(
    lake: Lake,
) -> None:
    lake.write_partition("events", DAY, _frame(1, rows=5))
    path = lake.write_partition("events", DAY, _frame(2, rows=2))

    assert lake.partition_files("events", DAY) == [path]
    assert lake.read_file(path).equals(_frame(2, rows=2))
    assert _names_in(lake, "events", DAY) == ["data.parquet"]


def test_given_same_input_when_written_twice_then_the_files_are_byte_identical(lake: Lake) -> None:
    first = lake.fs.cat(lake.write_partition("sequences", DAY, _frame(7)))
    second = lake.fs.cat(lake.write_partition("sequences", DAY, _frame(7)))
    assert first == second


def test_given_a_temp_file_left_by_a_crash_then_no_read_sees_it(lake: Lake) -> None:
    lake.write_partition("events", DAY, _frame(1))
    lake.fs.pipe(f"{lake.partition_file('events', DAY)}.tmp-deadbeef", b"half a parquet file")
    lake.fs.makedirs(lake.partition_dir("events", DAY + dt.timedelta(days=1)), exist_ok=True)
    lake.fs.pipe(f"{lake.partition_file('events', DAY + dt.timedelta(days=1))}.tmp-deadbeef", b"half")

    assert lake.dates("events") == [DAY]
    assert lake.scan("events").collect()["version"].to_list() == [1, 1, 1]


def test_given_abandoned_temp_files_when_the_file_is_rewritten_then_only_the_old_ones_are_removed(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    target = lake.write_partition("events", DAY, _frame(1))
    abandoned, in_flight = Path(f"{target}.tmp-abandoned"), Path(f"{target}.tmp-inflight")
    abandoned.write_bytes(b"left by a killed writer")
    in_flight.write_bytes(b"another writer, still running")
    an_hour_and_a_bit_ago = time.time() - lake_module.ABANDONED_AFTER_S - 60
    os.utime(abandoned, (an_hour_and_a_bit_ago, an_hour_and_a_bit_ago))

    lake.write_partition("events", DAY, _frame(2))

    assert not abandoned.exists() and in_flight.exists()
    assert lake.scan("events").collect()["version"].to_list() == [2, 2, 2]


# ---- locks --------------------------------------------------------------------


def test_given_a_held_lock_then_a_second_writer_is_refused_until_it_is_released(lake: Lake) -> None:
    with lake.lock("events", DAY):
        second = lake.lock("events", DAY)
        with pytest.raises(LockedError, match="events-2024-03-01"), second:
            pass
    with lake.lock("events", DAY):  # released on exit
        pass
    with pytest.raises(RuntimeError), lake.lock("events", DAY):
        raise RuntimeError("a failing stage")
    with lake.lock("events", DAY):  # released on error too
        pass


def test_given_writers_racing_for_one_lock_then_exactly_one_holds_it(lake: Lake) -> None:
    contenders = 6
    barrier = threading.Barrier(contenders)
    tried = threading.Barrier(contenders)
    outcomes: list[str] = []

    def contend() -> None:
        barrier.wait()
        try:
            with lake.lock("scores", DAY):
                outcomes.append("held")
                tried.wait()
        except LockedError:
            outcomes.append("refused")
            tried.wait()

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert sorted(outcomes) == ["held"] + ["refused"] * (contenders - 1)


def test_given_a_lock_from_another_host_then_it_is_kept_until_it_is_stale(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_file = f"{lake.table_dir('events').rsplit('/', 1)[0]}/_locks/events-2024-03-01.lock"
    lake.fs.makedirs(lock_file.rsplit("/", 1)[0], exist_ok=True)
    lake.fs.pipe(lock_file, b"some-other-host:4242")

    with pytest.raises(LockedError, match="some-other-host:4242"), lake.lock("events", DAY):
        pass

    monkeypatch.setattr(lake_module, "STALE_LOCK_AGE", dt.timedelta(0))
    with lake.lock("events", DAY):
        assert lake.fs.cat(lock_file).decode().endswith(f":{os.getpid()}")


# ---- real processes killed with SIGKILL -----------------------------------------

_HOLD_LOCK = """
import datetime as dt, sys, time
from clickstream.pipeline.core.lake import Lake
with Lake(sys.argv[1]).lock("events", dt.date(2024, 3, 1)):
    print("locked", flush=True)
    time.sleep(600)
"""

_REWRITE_FOREVER = """
import datetime as dt, sys
import polars as pl
from clickstream.pipeline.core.lake import Lake
lake, rows = Lake(sys.argv[1]), int(sys.argv[2])
x = (pl.int_range(rows, eager=True) * 2654435761) % 2_147_483_647  # incompressible: a slow write
version = 0
while True:
    version += 1
    lake.write_partition("events", dt.date(2024, 3, 1), pl.DataFrame({"version": [version] * rows, "x": x}))
    print(f"committed {version}", flush=True)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(child: subprocess.Popen[str], prefix: str) -> str:
    """The first stdout line starting with `prefix`; fails with the child's stderr if it exits."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(prefix):
            return line
    child.wait(DEADLINE_S)
    pytest.fail(f"child exited {child.returncode} before {prefix!r}: {child.stderr.read()[-2000:]}")


def _kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(DEADLINE_S)  # reaped: its pid is really gone


def test_given_a_holder_killed_with_sigkill_then_its_stale_lock_is_taken_over(lake: Lake) -> None:
    holder = _spawn(_HOLD_LOCK, lake.root)
    try:
        _wait_for_line(holder, "locked")
        with pytest.raises(LockedError, match=str(holder.pid)), lake.lock("events", DAY):
            pass  # a live holder keeps its lock
    finally:
        _kill(holder)

    with lake.lock("events", DAY):
        pass


@pytest.mark.parametrize("kill_point", ["while_the_temp_file_exists", "right_after_a_commit"])
def test_given_a_writer_killed_with_sigkill_mid_rewrite_then_the_last_good_partition_stays_readable(
    lake: Lake, kill_point: str
) -> None:
    rows = 400_000
    writer = _spawn(_REWRITE_FOREVER, lake.root, str(rows))
    try:
        _wait_for_line(writer, "committed 1")
        if kill_point == "right_after_a_commit":
            _wait_for_line(writer, "committed 2")
        else:
            deadline = time.monotonic() + DEADLINE_S
            while not any(".tmp-" in name for name in _names_in(lake, "events", DAY)):
                assert time.monotonic() < deadline, "never saw the writer's temporary file"
                assert writer.poll() is None, writer.stderr.read()[-2000:]
    finally:
        _kill(writer)

    (committed,) = lake.partition_files("events", DAY)
    survivor = lake.read_file(committed)
    assert survivor.height == rows
    assert survivor["version"].n_unique() == 1 and survivor["version"][0] >= 1
    assert lake.scan("events").collect().height == rows

    lake.write_partition("events", DAY, _frame(99))  # the next run completes normally
    assert lake.scan("events").collect()["version"].to_list() == [99, 99, 99]
