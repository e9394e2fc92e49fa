"""`clickstream sql`: one analyst query over the lake's tables, run in a DuckDB sandbox.

The query sees the lake's tables (SQL_TABLES) and nothing else: each is registered as a
lazy Arrow dataset over its current Delta version (with the `date` partition column), and
`models` as the registry's versions read up front, before the connection is
locked. The registry client (MLflow, and torch behind the champion history) is imported only
by a query that names `models`: a query over the lake alone starts in about a second instead
of several. Then

- external access is off: no file or URL functions (read_csv, read_parquet, glob, COPY,
  ATTACH, ...), no network, no Python objects by name, no extension installing or loading;
- the configuration is locked: SET/RESET cannot lift any of it;
- the query runs under a memory limit, half of it DuckDB's working memory (no spilling to
  disk) and half the result it returns, and under a time limit (interrupted when it passes).

The database is in memory and thrown away after the query, so statements other than
SELECT change nothing outside it. Every failure is one ClickstreamError line.
"""

from __future__ import annotations

import os
import re
import threading

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import TABLE_SCHEMAS, Lake
from clickstream.pipeline.core.tracking import store_is_missing

# Tables a query sees; partitioned ones carry their partition `date` column. `models`
# (serve.history.VERSIONS, from the registry) holds each version's `trained_through` day, so that a
# quality query can keep only the sessions after the training window of the model that scored them.
SQL_TABLES = ("events", "sequences", "scores", "cookie_intent", "quarantine", "models")
THREADS = min(4, os.cpu_count() or 1)
_BATCH_ROWS = 65_536
# Set after the tables are registered and before the query; lock_configuration comes last.
_SANDBOX = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET lock_configuration = true",
)


def run_sql(
    settings: Settings, query: str, *, timeout_s: float | None = None, memory_mb: int | None = None
) -> pl.DataFrame:
    """The result of one DuckDB SQL query over the lake's tables, each registered only when
    the query names it; an empty table has its schema and no rows. The time and memory limits
    default to settings.sql_timeout_s and settings.sql_memory_mb; a result larger than the
    memory limit is refused too."""
    if not query.strip():
        raise ClickstreamError("empty SQL query")
    timeout_s = settings.sql_timeout_s if timeout_s is None else timeout_s
    memory_mb = settings.sql_memory_mb if memory_mb is None else memory_mb
    lake = Lake(settings.lake)
    named = [name for name in SQL_TABLES if re.search(rf"\b{name}\b", query, re.IGNORECASE)]
    # the limit is shared: half for the engine's working memory, half for the result it returns
    con = duckdb.connect(":memory:", config={"threads": THREADS, "memory_limit": f"{memory_mb // 2}MiB"})
    timer = threading.Timer(timeout_s, con.interrupt)
    try:
        con.execute("SET temp_directory = ''")  # no spilling: the memory limit is the limit
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, as the lake holds them
        for name in named:
            con.register(name, _registry_table(settings) if name == "models" else _dataset(lake, name))
        for statement in _SANDBOX:
            con.execute(statement)
        timer.start()
        return _fetch(con.sql(query), memory_mb)
    except duckdb.InterruptException:
        raise ClickstreamError(
            f"SQL query stopped at its time limit of {timeout_s:g} s (--timeout, CLICKSTREAM_SQL_TIMEOUT_S)"
        ) from None
    except duckdb.OutOfMemoryException:
        raise ClickstreamError(_over_memory(memory_mb)) from None
    except duckdb.PermissionException as error:
        raise ClickstreamError(
            f"SQL error: {_first_line(error)}; queries read only the lake's tables ({', '.join(SQL_TABLES)})"
        ) from None
    except duckdb.Error as error:
        raise ClickstreamError(f"SQL error: {_first_line(error)} (tables: {', '.join(SQL_TABLES)})") from None
    finally:
        timer.cancel()
        con.close()


def _fetch(result: duckdb.DuckDBPyRelation | None, memory_mb: int) -> pl.DataFrame:
    """The result as a polars frame, batch by batch, refused once it passes the memory limit
    (an empty frame for a statement without one)."""
    if result is None:
        return pl.DataFrame()
    reader = result.to_arrow_reader(_BATCH_ROWS)
    batches, size = [], 0
    for batch in reader:
        size += batch.nbytes
        if size > memory_mb // 2 * 2**20:
            raise ClickstreamError(_over_memory(memory_mb, "its result"))
        batches.append(batch)
    return pl.from_arrow(pa.Table.from_batches(batches, schema=reader.schema))


def _dataset(lake: Lake, name: str) -> ds.Dataset | pa.Table:
    """Table `name` at its current version as a lazy Arrow dataset, with its `date` partition
    column (an empty table with its schema while it was never written)."""
    delta = lake.table(name)
    if delta is None:
        return pl.DataFrame(schema=TABLE_SCHEMAS[name]).to_arrow()
    return delta.to_pyarrow_dataset()


def _registry_table(settings: Settings) -> pa.Table:
    """`models`: every registered version (empty, and no store created, while there is none)."""
    # imported here, not at the top: only a query naming `models` pays for MLflow and torch
    from clickstream.pipeline.serve.history import VERSIONS, model_versions

    versions = pl.DataFrame(schema=VERSIONS) if store_is_missing(settings.tracking_uri) else model_versions(settings)
    return versions.to_arrow()


def _over_memory(memory_mb: int, what: str = "it") -> str:
    return (
        f"SQL query stopped: {what} needs more than its memory limit of {memory_mb:,} MiB "
        "(--memory-mb, CLICKSTREAM_SQL_MEMORY_MB); aggregate, filter or add LIMIT"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
