"""`clickstream sql` reaches nothing but the lake's tables: no local or remote files, no
network, no Python objects, no extensions, no way to unlock its settings, and every query
stops at its time and memory limits with one line."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.sql import SQL_TABLES, run_sql

OUTSIDE = "outside.csv"


@pytest.fixture
def lake_settings(settings: Settings, tmp_path: Path) -> Settings:
    """A lake with sequences/ on two days, and a readable CSV file outside it."""
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=300, days=2))
    (tmp_path / OUTSIDE).write_text("secret\nhunter2\n")
    return settings


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request path; yields (base URL, requests)."""
    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"a,b\n1,2\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def _refused(settings: Settings, query: str, fragment: str, **limits: object) -> str:
    with pytest.raises(ClickstreamError, match=fragment) as error:
        run_sql(settings, query, **limits)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_given_the_lake_tables_then_queries_read_them_with_their_date_column(lake_settings: Settings) -> None:
    per_day = run_sql(lake_settings, "SELECT date, COUNT(*) AS n FROM sequences GROUP BY date ORDER BY date")

    assert per_day["date"].to_list() == [dt.date(2014, 4, 1), dt.date(2014, 4, 2)]
    assert per_day["n"].sum() == 300
    for table in SQL_TABLES:  # tables without files (models: without a store) answer empty
        assert run_sql(lake_settings, f"SELECT COUNT(*) AS n FROM {table}")["n"].to_list() == [
            300 if table == "sequences" else 0
        ]
    assert not Path(lake_settings.tracking_uri.removeprefix("sqlite:///")).exists()  # not created by asking


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/shadow', header = false)",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('{outside}')",
        "SELECT * FROM '{outside}'",
        "SELECT * FROM read_text('{outside}')",
        "SELECT * FROM read_blob('{outside}')",
        "SELECT * FROM read_json('/nowhere/missing.json')",
        "SELECT * FROM read_parquet('{lake_file}')",
        "SELECT * FROM parquet_scan('{lake_file}')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM sniff_csv('{outside}')",
    ],
)
def test_given_a_file_function_then_it_is_refused_in_one_line(
    lake_settings: Settings, tmp_path: Path, query: str
) -> None:
    lake_file = Lake(lake_settings.lake).files("sequences")[0]  # even the lake's own files: tables only
    sql = query.format(outside=tmp_path / OUTSIDE, lake_file=lake_file)

    message = _refused(lake_settings, sql, "SQL error")

    assert "hunter2" not in message


def test_given_a_url_then_no_request_leaves_the_process(
    lake_settings: Settings, web_server: tuple[str, list[str]]
) -> None:
    base, seen = web_server
    for query in (
        f"SELECT * FROM read_csv('{base}/x.csv')",
        f"SELECT * FROM '{base}/x.parquet'",
        f"SELECT * FROM read_json('{base}/x.json')",
    ):
        _refused(lake_settings, query, "SQL error")

    assert seen == []


@pytest.mark.parametrize(
    ("query", "created"),
    [
        ("COPY (SELECT * FROM sequences) TO '{tmp}/copied.csv'", "copied.csv"),
        ("EXPORT DATABASE '{tmp}/exported'", "exported"),
        ("ATTACH '{tmp}/attached.duckdb' AS other", "attached.duckdb"),
    ],
)
def test_given_a_statement_that_writes_files_then_it_is_refused_and_nothing_is_written(
    lake_settings: Settings, tmp_path: Path, query: str, created: str
) -> None:
    _refused(lake_settings, query.format(tmp=tmp_path), "SQL error")

    assert not (tmp_path / created).exists()


@pytest.mark.parametrize(
    "query",
    [
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "SET memory_limit = '100GB'",
        "SET threads = 64",
        "SET temp_directory = '/tmp'",
        "PRAGMA memory_limit = '100GB'",
    ],
)
def test_given_a_statement_that_would_lift_the_sandbox_then_it_is_refused(lake_settings: Settings, query: str) -> None:
    _refused(lake_settings, query, "SQL error")


def test_given_a_python_object_in_scope_then_a_query_cannot_read_it_by_name(lake_settings: Settings) -> None:
    hidden_frame = pl.DataFrame({"secret": ["hunter2"]})

    _refused(lake_settings, "SELECT * FROM hidden_frame", "hidden_frame does not exist")
    assert hidden_frame.height == 1


def test_given_a_sandboxed_session_then_its_settings_report_the_locks(lake_settings: Settings) -> None:
    settings = run_sql(
        lake_settings,
        "SELECT name, value FROM duckdb_settings() WHERE name IN "
        "('enable_external_access', 'lock_configuration', 'autoload_known_extensions', "
        "'autoinstall_known_extensions', 'memory_limit', 'temp_directory')",
        memory_mb=256,
    )

    values = dict(zip(settings["name"], settings["value"], strict=True))
    assert values["enable_external_access"] == "false" and values["lock_configuration"] == "true"
    assert values["autoload_known_extensions"] == "false" and values["autoinstall_known_extensions"] == "false"
    assert values["memory_limit"] == "128.0 MiB" and values["temp_directory"] == ""


def test_given_a_cross_join_without_end_then_it_stops_at_the_time_limit(lake_settings: Settings) -> None:
    query = (
        "SELECT SUM(a.n_events * b.n_events * c.n_events * d.range) "
        "FROM sequences a, sequences b, sequences c, range(100000) d"
    )

    _refused(lake_settings, query, r"time limit of 0\.5 s .*CLICKSTREAM_SQL_TIMEOUT_S", timeout_s=0.5)


def test_given_a_query_needing_more_memory_than_its_limit_then_it_stops_with_the_limit_named(
    lake_settings: Settings,
) -> None:
    _refused(
        lake_settings,
        "SELECT LIST(range) FROM range(200000000)",
        r"memory limit of 64 MiB .*CLICKSTREAM_SQL_MEMORY_MB",
        memory_mb=64,
    )


def test_given_a_result_larger_than_the_memory_limit_then_it_is_refused_not_collected(
    lake_settings: Settings,
) -> None:
    _refused(lake_settings, "SELECT range AS n FROM range(50000000)", r"its result needs more than", memory_mb=64)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "empty SQL query"),
        ("   ", "empty SQL query"),
        ("SELEC * FROM sequences", "Parser Error"),
        ("SELECT * FROM nowhere", "nowhere does not exist"),
        ("SELECT 1/0::INTEGER AS x, 'a'::INTEGER AS y", "Conversion Error"),
        ("SELECT * FROM sequences; SELEC", "Parser Error"),
    ],
)
def test_given_a_broken_query_then_one_line_naming_the_tables(
    lake_settings: Settings, query: str, fragment: str
) -> None:
    _refused(lake_settings, query, fragment)


def test_given_statements_that_change_the_database_then_the_lake_is_untouched(lake_settings: Settings) -> None:
    lake = Lake(lake_settings.lake)
    before = {path: Path(path).read_bytes() for path in lake.files("sequences")}
    version = lake.version("sequences")

    run_sql(lake_settings, "CREATE TABLE t AS SELECT * FROM sequences; DROP VIEW sequences")
    _refused(lake_settings, "DELETE FROM sequences", "SQL error")

    assert lake.version("sequences") == version  # no commit: a Delta delete would add one, not touch files
    assert {path: Path(path).read_bytes() for path in lake.files("sequences")} == before
    assert run_sql(lake_settings, "SELECT COUNT(*) AS n FROM sequences")["n"][0] == 300
