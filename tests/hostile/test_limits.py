"""The limits of `clickstream sql` hold whatever the query does.

The probes: `SELECT length(repeat('x', 2000000000))` under `--memory-mb 256` ran 22 s past a 5 s
timeout and peaked at 4.1 GB; a Python-side `list(range(3e8))` reached 2.98 GB under 256 MB;
`--timeout inf` / `1e10` and `CLICKSTREAM_SQL_TIMEOUT_S=1e308` printed a timer traceback and ran
without a limit; `--memory-mb 99999999999999` printed a DuckDB traceback.

The memory probes run in a process of their own (`_measured`), which reports its own peak memory
and its children's (getrusage), how long the call took and what it left running. That process has
an outer address-space cap of OUTER_CAP_GB, only so that a regression cannot take the machine's
memory: the query process lowers it to its own limit, and a peak near the outer cap fails the test.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import run_cli
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import SettingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.sql import run_limited, run_sql

OUTER_CAP_GB = 8
# A 256 MiB query process holds about 200 MiB of libraries and tables: a peak far under the 2.98 and
# 4.1 GB of the probes, with room for a busy machine
PEAK_LIMIT_MB = 1024
_MEASURE = """
import json, resource, sys, time
import psutil
from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.serve.sql import run_limited, run_sql
from clickstream.pipeline.core.errors import ClickstreamError
settings = load_settings(lake=sys.argv[1], environ={{}})
started = time.monotonic()
try:
    outcome = repr({call})
except ClickstreamError as error:
    outcome = "error: " + str(error)
print(json.dumps({{
    "outcome": outcome,
    "seconds": time.monotonic() - started,
    "own_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "left_running": [child.pid for child in psutil.Process().children(recursive=True)],
}}))
"""


def _outer_cap() -> None:
    cap = OUTER_CAP_GB << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _measured(call: str, lake: str) -> dict[str, object]:
    """Run `call` (an expression using run_sql, run_limited and settings) in a fresh process; what it reports."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE.format(call=call), lake],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_outer_cap,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def lake_settings(settings: Settings) -> Settings:
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=300, days=2))
    return settings


def test_given_one_expression_of_two_gigabytes_then_it_stops_at_the_memory_limit_with_memory_bounded(
    lake_settings: Settings,
) -> None:
    report = _measured(
        "run_sql(settings, \"SELECT length(repeat('x', 2000000000)) AS n\", memory_mb=256, timeout_s=5)",
        lake_settings.lake,
    )

    assert str(report["outcome"]).startswith("error: SQL query stopped: it needs more than its memory limit of 256 MiB")
    assert report["seconds"] < 3 * 5  # the probe ran 22 s past its 5 s
    assert report["child_peak_mb"] < PEAK_LIMIT_MB  # the probe peaked at 4.1 GB
    assert report["own_peak_mb"] < PEAK_LIMIT_MB
    assert report["left_running"] == []


def test_given_a_python_side_blow_up_in_the_query_process_then_it_stops_at_the_memory_limit(
    lake_settings: Settings,
) -> None:
    report = _measured("run_limited(list, range(300_000_000), memory_mb=256, timeout_s=60)", lake_settings.lake)

    assert str(report["outcome"]).startswith("error: SQL query stopped: it needs more than its memory limit of 256 MiB")
    assert report["child_peak_mb"] < PEAK_LIMIT_MB  # the probe reached 2.98 GB
    assert report["own_peak_mb"] < PEAK_LIMIT_MB
    assert report["left_running"] == []


def test_given_an_expression_that_ignores_interrupts_then_its_process_is_killed_at_the_time_limit(
    lake_settings: Settings,
) -> None:
    # room enough in memory: DuckDB builds the 2 GB string for 20 s, never looking at an interrupt
    report = _measured(
        "run_sql(settings, \"SELECT length(repeat('x', 2000000000)) AS n\", memory_mb=4096, timeout_s=3)",
        lake_settings.lake,
    )

    assert report["outcome"] == (
        "error: SQL query stopped at its time limit of 3 s (--timeout, CLICKSTREAM_SQL_TIMEOUT_S)"
    )
    assert report["seconds"] < 3 * 3
    assert report["left_running"] == []


def test_given_a_query_within_its_limits_then_its_result_comes_back_and_its_process_ends(
    lake_settings: Settings,
) -> None:
    report = _measured("run_sql(settings, 'SELECT COUNT(*) AS n FROM sequences')['n'].to_list()", lake_settings.lake)

    assert report["outcome"] == "[300]"
    assert report["left_running"] == []
    assert run_limited(sum, range(1000), timeout_s=30, memory_mb=64) == 499500


@pytest.mark.parametrize("timeout_s", [math.inf, -math.inf, math.nan, 1e10, 1e308, 3600.5, 0.0, -1.0])
def test_given_a_time_limit_out_of_range_then_one_line_naming_the_range_and_nothing_runs(
    lake_settings: Settings, timeout_s: float
) -> None:
    for call in (
        lambda: run_sql(lake_settings, "SELECT 1", timeout_s=timeout_s),
        lambda: run_limited(sum, range(3), timeout_s=timeout_s, memory_mb=64),
    ):
        with pytest.raises(SettingError) as error:
            call()

        message = str(error.value)
        assert "\n" not in message
        assert "expected a number of seconds > 0 and <= 3600 (--timeout, CLICKSTREAM_SQL_TIMEOUT_S)" in message


@pytest.mark.parametrize("memory_mb", [99_999_999_999_999, 2**20 + 1, 63, 0, -64])
def test_given_a_memory_limit_out_of_range_then_one_line_naming_the_range(
    lake_settings: Settings, memory_mb: int
) -> None:
    with pytest.raises(SettingError) as error:
        run_sql(lake_settings, "SELECT 1", memory_mb=memory_mb)

    message = str(error.value)
    assert "\n" not in message and f"SQL memory limit {memory_mb!r} MiB is out of range" in message
    assert "expected an integer >= 64 and <= 1048576 (1 TiB) (--memory-mb, CLICKSTREAM_SQL_MEMORY_MB)" in message


def test_given_the_largest_limits_then_they_are_accepted(lake_settings: Settings) -> None:
    assert run_sql(lake_settings, "SELECT 1 AS x", timeout_s=3600, memory_mb=2**20)["x"].to_list() == [1]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--timeout", "inf"],
            {},
            "SQL time limit inf s is out of range; expected a number of seconds > 0 and <= 3600",
        ),
        (["--timeout", "1e10"], {}, "SQL time limit 1e+10 s is out of range"),
        ([], {"CLICKSTREAM_SQL_TIMEOUT_S": "1e308"}, "CLICKSTREAM_SQL_TIMEOUT_S='1e308' is out of range"),
        (["--memory-mb", "99999999999999"], {}, "SQL memory limit 99999999999999 MiB is out of range"),
    ],
)
def test_given_a_limit_out_of_range_on_the_command_line_then_exit_2_with_one_line(
    lake_settings: Settings, tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    done = run_cli("sql", "SELECT 42 AS answer", *args, "--lake", lake_settings.lake, cwd=tmp_path, env=env)

    assert done.code == 2 and done.stdout == ""
    assert expected in done.error_line and "Traceback" not in done.stderr


def test_given_a_query_over_the_lake_then_the_command_imports_no_model_libraries(
    lake_settings: Settings, tmp_path: Path
) -> None:
    done = run_cli("sql", "SELECT COUNT(*) AS n FROM sequences", "--lake", lake_settings.lake, cwd=tmp_path)

    assert done.code == 0, done.stderr
    assert "300" in done.stdout
    assert done.heavy == []  # no torch, no MLflow: it starts in about a second
