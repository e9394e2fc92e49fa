"""One line (exit 2), or the quarantine, where a user or the machine causes a failure.

The probes replayed: a lake, or the home, on a full file system, and a read-only lake, under ingest,
sequences and score (a small tmpfs, filled or remounted read-only: needs root, skipped otherwise);
`CLICKSTREAM_HOME=/etc/passwd`; SQL results of every DuckDB type the output formats cannot show, an
infinite timestamp, repeated column names over a join and `duckdb_settings()`; one JSON row with a
lone surrogate; `clickstream generate --start-date 9999-12-30`.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from cli_process import Finished, run_cli
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings, load_settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.ingest import ingest_files
from clickstream.pipeline.serve.output import FORMATS, write_output
from clickstream.pipeline.serve.sql import run_sql
from clickstream.pipeline.synthetic.generate import generate_logs

DISK_MB = 4
TODAY = dt.date(2015, 1, 1)
STAGE_TABLES = {"ingest": ("quarantine", "events"), "sequences": ("sequences",), "score": ("scores", "cookie_intent")}


# ---- a small file system to fill or make read-only ------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs mounted for this test (skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no mount command: a small file system to fill cannot be made here")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a {DISK_MB} MiB tmpfs is not permitted here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _fill(disk: Path, leave_kib: int = 0) -> Path:
    """Fill the file system of `disk` with a file, then give `leave_kib` KiB of it back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
        handle.truncate(max(0, handle.tell() - leave_kib * 1024))
    return filler


def _read_only(disk: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"remounting the tmpfs read-only is not permitted here: {done.stderr.strip()}")


def _state(lake: Lake, tables: tuple[str, ...]) -> dict[str, object]:
    """What a reader sees of the tables: each one's version and rows per date."""
    return {table: (lake.version(table), lake.rows_per_date(table)) for table in tables}


def _orphans(lake_root: Path, lake: Lake, tables: tuple[str, ...]) -> set[Path]:
    """Data files on disk that the tables' current versions do not name."""
    named = {Path(path).resolve() for table in tables for path in lake.files(table)}
    on_disk = {path.resolve() for table in tables for path in (lake_root / table).rglob("*.parquet")}
    return on_disk - named


def _raw_logs(folder: Path, sessions: int, seed: int) -> list[str]:
    generate_logs(folder, sessions=sessions, days=3, start_date=dt.date(2014, 4, 1), seed=seed)
    return [str(folder / "yoochoose-clicks.dat"), "--buys", str(folder / "yoochoose-buys.dat")]


def _assert_one_line(done: Finished, *fragments: str) -> None:
    assert done.code == 2, done.stderr
    assert "Traceback" not in done.stderr and "panicked" not in done.stderr
    line = done.error_line  # the only line
    for fragment in fragments:
        assert fragment in line, line


def test_given_a_disk_that_fills_during_an_ingest_then_one_line_nothing_half_committed_and_a_rerun_completes(
    small_disk: Path, tmp_path: Path
) -> None:
    lake_root = small_disk / "lake"
    settings = load_settings(lake=str(lake_root), home=tmp_path / "home", environ={})
    env = {"CLICKSTREAM_HOME": str(tmp_path / "home")}
    first = _raw_logs(tmp_path / "first", sessions=300, seed=1)
    second = _raw_logs(tmp_path / "second", sessions=20_000, seed=2)  # about a MiB of events on three dates
    assert run_cli("ingest", *first, "--format", "yoochoose", "--lake", str(lake_root), cwd=tmp_path, env=env).code == 0
    lake = Lake(settings.lake)
    before = _state(lake, ("events",))
    filler = _fill(small_disk, leave_kib=256)  # room for the quarantine's commit and part of the events

    done = run_cli("ingest", *second, "--format", "yoochoose", "--lake", str(lake_root), cwd=tmp_path, env=env)

    _assert_one_line(
        done, "error: ingest: cannot write table events of lake", "no space left on device", "nothing of this run"
    )
    assert _state(lake, ("events",)) == before  # not one date of the batch
    assert _orphans(lake_root, lake, ("events", "quarantine")) == set()  # its written files are removed again

    filler.unlink()
    rerun = run_cli("ingest", *second, "--format", "yoochoose", "--lake", str(lake_root), cwd=tmp_path, env=env)

    assert rerun.code == 0, rerun.stderr
    after = lake.rows_per_date("events")
    assert sum(after.values()) > sum(before["events"][1].values())  # type: ignore[index]


@pytest.mark.parametrize("condition", ["full", "read-only"])
@pytest.mark.parametrize("stage", ["ingest", "sequences", "score"])
def test_given_a_full_or_read_only_lake_then_each_stage_fails_in_one_line_and_commits_nothing(
    small_disk: Path, tmp_path: Path, request: pytest.FixtureRequest, stage: str, condition: str
) -> None:
    lake_root = small_disk / "lake"
    home = tmp_path / "home"
    settings = load_settings(lake=str(lake_root), home=home, environ={})
    env = {"CLICKSTREAM_HOME": str(home)}
    lake = Lake(settings.lake)
    args: list[str] = []
    if stage == "score":
        champion: Settings = request.getfixturevalue("champion_settings")
        env["MLFLOW_TRACKING_URI"] = champion.tracking_uri
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # its progress lines are no error
        write_sequences(lake, synthetic_sequences(sessions=300, days=2))
    else:
        raw = _raw_logs(tmp_path / "raw", sessions=300, seed=3)
        ingest_files(settings, "yoochoose", [Path(raw[0])], [Path(raw[2])], ingestion_date=TODAY)
        if stage == "ingest":  # the same kind of file, another batch
            args = [*_raw_logs(tmp_path / "more", sessions=300, seed=4), "--format", "yoochoose"]
    tables = STAGE_TABLES[stage]
    before = _state(lake, tables)
    if condition == "full":
        _fill(small_disk)
    else:
        _read_only(small_disk)

    done = run_cli(stage, *args, "--lake", str(lake_root), cwd=tmp_path, env=env)

    reason = "no space left on device" if condition == "full" else "read-only file system"
    _assert_one_line(done, f"error: {stage}: cannot write table {tables[0]} of lake", reason, "nothing of this run")
    assert _state(lake, tables) == before
    assert _orphans(lake_root, lake, tables) == set()


def test_given_a_full_home_then_an_ingest_fails_in_one_line(small_disk: Path, tmp_path: Path) -> None:
    raw = _raw_logs(tmp_path / "raw", sessions=300, seed=5)
    _fill(small_disk)

    done = run_cli(
        "ingest",
        *raw,
        "--format",
        "yoochoose",
        "--lake",
        str(tmp_path / "lake"),
        cwd=tmp_path,
        env={"CLICKSTREAM_HOME": str(small_disk / "home")},
    )

    _assert_one_line(done, "error: cannot write: no space left on device", "then run it again")
    assert Lake(str(tmp_path / "lake")).version("events") is None


def test_given_a_full_temporary_folder_then_an_sql_result_fails_in_one_line(small_disk: Path, tmp_path: Path) -> None:
    _fill(small_disk, leave_kib=64)  # room for Python to take it as its temporary folder, not for the result

    done = run_cli(
        "sql", "SELECT range AS n FROM range(100000)", "--lake", str(tmp_path / "lake"), cwd=tmp_path,
        env={"TMPDIR": str(small_disk)},
    )  # fmt: skip

    _assert_one_line(done, "cannot write: no space left on device")
    assert done.stdout == ""


# ---- a home that is a file -----------------------------------------------------------------------


SYSTEM_FILE = Path("/etc/passwd")  # the probe's home: a file on every Linux machine


@pytest.mark.parametrize("home", ["system file", "file", "under a file"])
@pytest.mark.parametrize("command", [["ingest", "clicks.dat", "--format", "yoochoose"], ["sql", "SELECT 1"]])
def test_given_a_home_that_is_a_file_then_one_line_naming_it(tmp_path: Path, home: str, command: list[str]) -> None:
    (tmp_path / "file").write_text("not a folder\n")
    path = {"system file": str(SYSTEM_FILE), "file": str(tmp_path / "file"), "under a file": str(tmp_path / "file/x")}
    if home == "system file" and not SYSTEM_FILE.is_file():
        pytest.skip(f"no {SYSTEM_FILE} here")
    (tmp_path / "clicks.dat").write_text("1,2014-04-01T10:00:00.000Z,214536502,0\n")

    done = run_cli(*command, "--lake", str(tmp_path / "lake"), cwd=tmp_path, env={"CLICKSTREAM_HOME": path[home]})

    expected = "is not a folder" if home != "under a file" else f"cannot be a folder: {tmp_path / 'file'} is a file"
    _assert_one_line(done, f"error: home {path[home]} (CLICKSTREAM_HOME)", expected)
    assert not (tmp_path / "lake").exists()


# ---- every DuckDB result type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT INTERVAL 3 DAY AS x", {"x": (pl.String, "3 days")}),
        ("SELECT 'ab\\x00'::BLOB AS x", {"x": (pl.String, "ab\\x00")}),
        ("SELECT '1010'::BIT AS x", {"x": (pl.String, "1010")}),
        ("SELECT ('1' || repeat('0', 40))::VARINT AS x", {"x": (pl.String, "1" + "0" * 40)}),
        ("SELECT 42::VARIANT AS x", {"x": (pl.String, "42")}),
        ("SELECT union_value(k := 1) AS x", {"x": (pl.String, "1")}),
        ("SELECT TIMETZ '12:00:00+01' AS x", {"x": (pl.String, "12:00:00+01")}),
        ("SELECT [INTERVAL 1 DAY] AS x", {"x": (pl.String, "[1 day]")}),
        (
            "SELECT 'infinity'::TIMESTAMP AS x, TIMESTAMP '2014-04-01 10:00:00' AS y",
            {"x": (pl.String, "infinity"), "y": (pl.Datetime("us"), dt.datetime(2014, 4, 1, 10))},
        ),
        ("SELECT '-infinity'::TIMESTAMPTZ AS x", {"x": (pl.String, "-infinity")}),
        ("SELECT 'infinity'::DATE AS x", {"x": (pl.String, "infinity")}),
        ("SELECT 'infinity'::TIMESTAMP_NS AS x", {"x": (pl.String, "infinity")}),
        ("SELECT '290000-01-01'::TIMESTAMP AS x", {"x": (pl.String, "290000-01-01 00:00:00")}),
        ("SELECT {'a': 'infinity'::DATE} AS x", {"x": (pl.String, "{'a': infinity}")}),
        (
            # the infinity in the last batch: the column is found out of range after others were written
            "SELECT CASE WHEN range = 199999 THEN 'infinity'::TIMESTAMP ELSE TIMESTAMP '2014-01-01' END AS x "
            "FROM range(200000) ORDER BY range",
            {"x": (pl.String, "2014-01-01 00:00:00")},
        ),
        (
            "SELECT * FROM (SELECT 1 AS a, 3 AS a_1) t, (SELECT 2 AS a) u",
            {"a": (pl.Int32, 1), "a_1": (pl.Int32, 3), "a_2": (pl.Int32, 2)},
        ),
        ("SELECT 2 AS n, DATE '2014-04-01' AS d", {"n": (pl.Int32, 2), "d": (pl.Date, dt.date(2014, 4, 1))}),
    ],
)
def test_given_any_duckdb_result_type_then_text_or_its_own_type_in_every_output_format(
    settings: Settings, tmp_path: Path, query: str, expected: dict[str, tuple[pl.DataType, object]]
) -> None:
    frame = run_sql(settings, query)

    assert frame.columns == list(expected)
    assert {name: (frame.schema[name], frame[name][0]) for name in frame.columns} == expected
    for fmt in FORMATS:  # none of them panics on the result
        write_output(frame, fmt, tmp_path / f"out.{fmt}")
        assert (tmp_path / f"out.{fmt}").stat().st_size > 0


def test_given_select_star_over_a_self_join_and_duckdb_settings_then_the_command_answers(
    settings: Settings, tmp_path: Path
) -> None:
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=50, days=1))
    join = "SELECT * FROM sequences a JOIN sequences b ON a.session_id = b.session_id ORDER BY 1 LIMIT 3"

    joined = run_cli("sql", join, "--format", "csv", "--lake", settings.lake, cwd=tmp_path)
    settings_json = run_cli(
        "sql", "SELECT * FROM duckdb_settings()", "--format", "json", "--lake", settings.lake, cwd=tmp_path
    )

    assert joined.code == 0, joined.stderr
    header = joined.stdout.splitlines()[0].split(",")
    assert header.count("session_id") == 1 and "session_id_1" in header and "date_1" in header
    assert settings_json.code == 0, settings_json.stderr
    rows = json.loads(settings_json.stdout)
    assert {"name", "value", "typed_value"} <= set(rows[0])  # typed_value, a VARIANT, as text
    assert {row["name"]: row["value"] for row in rows}["lock_configuration"] == "true"


# ---- one bad JSON row ---------------------------------------------------------------------------


def test_given_a_json_row_with_a_lone_surrogate_then_that_row_is_quarantined_with_a_reason(
    settings: Settings, tmp_path: Path
) -> None:
    good = [
        json.dumps({"cookie_id": f"c{n}", "ts": f"2014-04-01T10:{n:02d}:00Z", "event_type": "view", "item_id": "i"})
        for n in range(40)
    ]
    lone = '{"cookie_id": "\\ud83d", "ts": "2014-04-01T11:00:00Z", "event_type": "view", "item_id": "i"}'
    paired = '{"cookie_id": "c\\ud83d\\ude00", "ts": "2014-04-01T11:01:00Z", "event_type": "view", "item_id": "i"}'
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([*good[:20], lone, paired, *good[20:]]) + "\n")

    summary = ingest_files(settings, "events", [path], ingestion_date=TODAY)

    assert (summary.rows_written, summary.quarantined) == (41, 1)
    quarantine = Lake(settings.lake).read("quarantine")
    assert quarantine.select("line", "reason").rows() == [
        (21, "cookie_id holds a lone UTF-16 surrogate (not Unicode text)")
    ]
    assert quarantine["raw"][0] == lone  # the line as written
    assert "c\N{GRINNING FACE}" in Lake(settings.lake).read("events")["cookie_id"].cast(pl.String).to_list()


# ---- generate's dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--start-date", "9999-12-30"],
        ["--start-date", "9999-12-24", "--days", "2"],
        ["--start-date", "1989-12-31"],
        ["--days", "100000000"],
    ],
)
def test_given_generate_dates_past_what_it_can_write_then_one_line_and_no_files(
    tmp_path: Path, args: list[str]
) -> None:
    done = run_cli("generate", str(tmp_path / "out"), "--sessions", "50", *args, cwd=tmp_path)

    _assert_one_line(done, "falls outside the days generate writes, 1990-01-01 to 9999-12-24")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_given_the_last_day_generate_writes_then_it_writes_it(tmp_path: Path) -> None:
    done = run_cli(
        "generate", str(tmp_path / "out"), "--sessions", "50", "--days", "1", "--start-date", "9999-12-24", cwd=tmp_path
    )

    assert done.code == 0, done.stderr
    truth = pl.read_parquet(tmp_path / "out" / "truth.parquet")
    assert truth["session_start"].dt.date().unique().to_list() == [dt.date(9999, 12, 24)]


@pytest.mark.parametrize("full", ["checkpoints", "home"])
def test_given_a_full_disk_under_a_training_then_one_line_naming_it(
    small_disk: Path, tmp_path: Path, full: str
) -> None:
    lake_root = tmp_path / "lake"
    write_sequences(Lake(str(lake_root)), synthetic_sequences(sessions=1500, days=4))
    env = {"CLICKSTREAM_HOME": str(tmp_path / "home"), "CLICKSTREAM_CHECKPOINTS": str(small_disk / "checkpoints")}
    if full == "home":  # the tracking store's SQLite database and the run's artifacts
        env = {"CLICKSTREAM_HOME": str(small_disk / "home")}
    _fill(small_disk)

    done = run_cli("train", "--epochs", "1", "--device", "cpu", "--lake", str(lake_root), cwd=tmp_path, env=env)

    _assert_one_line(done, "no space left on device")
