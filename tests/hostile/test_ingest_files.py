"""Hostile files and paths: every failure is one line naming the file and what is wrong (exit
2 at the CLI, never a traceback), one file under any spelling is one batch, and the limits
on decompressed bytes stop a gzip bomb or a file without line breaks with a clear error."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs.corpus import GOOD

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.ingest import ingest_files
from clickstream.pipeline.ingest.raw_files import CHUNK_LINES, ReadLimits, iter_line_chunks

TODAY = dt.date(2015, 1, 1)


def run_cli(
    *args: str, env: dict[str, str] | None = None, without_root_powers: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process; `without_root_powers`: as root, without the capabilities
    that let root search any folder, so that permissions apply as to any user."""
    command = [sys.executable, "-c", "from clickstream.pipeline.orchestrate.cli import main; main()", *args]
    if without_root_powers and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: folder permissions cannot apply")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_given_a_symlink_loop_then_the_cli_says_it_is_a_loop(tmp_path: Path) -> None:
    loop = tmp_path / "clicks.dat"
    loop.symlink_to(tmp_path / "other.dat")
    (tmp_path / "other.dat").symlink_to(loop)
    result = run_cli("ingest", "--format", "yoochoose", str(loop), "--lake", str(tmp_path / "lake"))
    assert_one_line_error(result, str(loop), "symbolic link loop")


def test_given_a_file_in_a_folder_that_cannot_be_searched_then_the_cli_says_permission_denied(
    tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "clicks.dat").write_text(GOOD)
    locked.chmod(0o000)
    try:
        args = ("ingest", "--format", "yoochoose", str(locked / "clicks.dat"), "--lake", str(tmp_path / "lake"))
        result = run_cli(*args, without_root_powers=True)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(result, str(locked / "clicks.dat"), "permission denied")


def test_given_one_file_under_other_spellings_then_it_is_one_batch_and_events_are_not_doubled(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "two.dat").write_text(GOOD)
    (tmp_path / "link.dat").symlink_to(tmp_path / "in" / "two.dat")
    spellings = [tmp_path / "in" / "two.dat", tmp_path / "in" / "sub" / ".." / "two.dat", tmp_path / "link.dat"]
    summaries = [ingest_files(settings, "yoochoose", [path], ingestion_date=TODAY) for path in spellings]
    assert len({summary.batch for summary in summaries}) == 1
    assert Lake(settings.lake).scan("events").collect().height == summaries[0].rows_written == len(GOOD.splitlines())


def test_given_one_file_twice_in_a_batch_then_an_input_error_names_both(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "two.dat").write_text(GOOD)
    with pytest.raises(InputError, match="are the same file"):
        ingest_files(settings, "yoochoose", [tmp_path / "two.dat", tmp_path / "sub" / ".." / "two.dat"])


def test_given_a_small_truncated_gzip_then_the_error_names_the_last_whole_line(tmp_path: Path) -> None:
    lines = [f"{n},2014-04-07T10:00:00.000Z,5,0\n" for n in range(1, 2001)]
    data = gzip.compress("".join(lines).encode())
    path = tmp_path / "c.dat.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated gzip.* after line (\d[\d,]*) \(decompressed byte") as error:
        list(iter_line_chunks(path))
    last = int(error.value.args[0].split("after line ")[1].split(" ")[0].replace(",", ""))
    assert 0 < last < 2000
    offset = int(error.value.args[0].split("decompressed byte ")[1].rstrip(")").replace(",", ""))
    assert offset >= len("".join(lines[:last]))


def test_given_corrupt_bytes_inside_a_gzip_then_the_error_says_corrupt_and_where(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(os.urandom(200_000).hex().encode(), compresslevel=1))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path = tmp_path / "c.dat.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt gzip data at or after compressed byte [\d,]+ .* after line 0"):
        list(iter_line_chunks(path))


def test_given_a_gzip_bomb_then_the_default_limits_stop_it_early_with_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "clicks.dat.gz"
    with gzip.open(path, "wb") as out:
        for _ in range(64):
            out.write(b"\n" * (1 << 20))
    assert path.stat().st_size < 1 << 20
    result = run_cli(
        "ingest", "--format", "yoochoose", str(path), "--lake", str(tmp_path / "lake"),
        env={"CLICKSTREAM_HOME": str(tmp_path / "state")},
    )
    assert_one_line_error(result, str(path), "more than 100 times as many", "CLICKSTREAM_MAX_GZIP_RATIO")
    assert not (tmp_path / "state" / "staging").exists() or not any((tmp_path / "state" / "staging").iterdir())


def test_given_a_file_over_the_per_file_limit_then_a_one_line_error_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "clicks.dat"
    path.write_text(GOOD * 100)
    result = run_cli(
        "ingest", "--format", "yoochoose", str(path), "--lake", str(tmp_path / "lake"),
        env={"CLICKSTREAM_MAX_FILE_BYTES": "10000", "CLICKSTREAM_HOME": str(tmp_path / "state")},
    )
    assert_one_line_error(result, str(path), "more than 10,000 bytes", "CLICKSTREAM_MAX_FILE_BYTES")


def test_given_a_line_over_the_per_line_limit_then_the_error_names_the_line_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "clicks.dat"
    path.write_text(GOOD + "1," * 600 + "\n" + GOOD)
    with pytest.raises(InputError, match=r"line 200 is longer than 1,000 bytes.*CLICKSTREAM_MAX_LINE_BYTES"):
        list(iter_line_chunks(path, limits=ReadLimits(max_line_bytes=1000)))


def test_given_a_bad_limit_setting_then_the_cli_names_it(tmp_path: Path) -> None:
    path = tmp_path / "clicks.dat"
    path.write_text(GOOD)
    result = run_cli("ingest", "--format", "yoochoose", str(path), env={"CLICKSTREAM_MAX_LINE_BYTES": "1MB"})
    assert_one_line_error(result, "CLICKSTREAM_MAX_LINE_BYTES")


def test_given_millions_of_blank_lines_then_no_chunk_holds_more_than_chunk_lines(tmp_path: Path) -> None:
    path = tmp_path / "clicks.dat.gz"
    path.write_bytes(gzip.compress(b"\n" * (2 * CHUNK_LINES + 5)))
    sizes = [len(chunk) for chunk in iter_line_chunks(path)]
    assert max(sizes) <= CHUNK_LINES and sum(sizes) == 2 * CHUNK_LINES + 5
