"""`clickstream sql`: one analyst query over the lake's tables, run in a DuckDB sandbox, in a
process of its own under hard limits.

The query sees the lake's tables (SQL_TABLES) and nothing else: each is registered as a
lazy Arrow dataset over its current Delta version (with the `date` partition column), and
`models` as the registry's versions read up front. The registry client (MLflow, and torch behind
the champion history) is imported only by a query that names `models`: a query over the lake
alone starts in about a second instead of several. Then

- external access is off: no file or URL functions (read_csv, read_parquet, glob, COPY,
  ATTACH, ...), no network, no Python objects by name, no extension installing or loading;
- the configuration is locked: SET/RESET cannot lift any of it;
- the query runs under a memory limit, half of it DuckDB's working memory (no spilling to
  disk) and half the result it returns, and under a time limit.

The limits hold for anything the query does, not only for what DuckDB counts: the query runs in a
child process (`run_limited`) whose address space is capped at what it holds once its tables are
open plus the memory limit (and SLACK_MB for thread stacks and allocator arenas), so an allocation
past it fails there (one expression's `repeat('x', 2000000000)` as much as a Python-side list), and
which is killed when the time limit passes, whatever it is doing. The result comes back as an Arrow
IPC file in a private temporary folder, at most half the memory limit.

Every result type comes back readable: a column of a type the output formats cannot show
(INTERVAL, BLOB, BIT, BIGNUM/VARINT, VARIANT, UNION, TIME WITH TIME ZONE, ...) is DuckDB's text of
it, as is a date or timestamp column holding a value outside years 1-9999 (such as 'infinity');
repeated column names (`SELECT *` over a join) get DuckDB's suffixes `_1`, `_2`, ...

The database is in memory and thrown away after the query, so statements other than
SELECT change nothing outside it. Every failure is one ClickstreamError line.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clickstream.pipeline.core.config import Settings, check_sql_limits
from clickstream.pipeline.core.errors import ClickstreamError, StorageError

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

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
# Address space a query process may take beyond what it holds when its tables are open plus the
# memory limit: the stacks of the threads a scan starts and their allocator arenas (a scan of the lake
# took under 100 MiB of it; none of this is memory in use until touched).
SLACK_MB = 256
# The query process must have its tables open within this (its own imports, the tables' Delta logs),
# before the time limit starts; and it must end this soon after it sent its outcome.
STARTUP_S = 120.0
EXIT_S = 10.0
RESULT_FILE = "result.arrow"

# DuckDB types that reach polars and every output format as they are; any other is cast to text.
# (A nested type keeps its form when everything in it is one of these.)
_KEPT_TYPES = frozenset(
    {
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "hugeint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "uhugeint",
        "float",
        "double",
        "decimal",
        "varchar",
        "uuid",
        "enum",
        "time",
        "null",
    }
)
_NESTED_TYPES = frozenset({"list", "struct", "map", "array"})
# Kept while every value is within years 1-9999; a column holding one outside (such as 'infinity',
# which no output format can show) is run again as text.
_DATED_TYPES = frozenset(
    {"date", "timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns", "timestamp with time zone"}
)
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799  # 0001-01-01 00:00:00, 9999-12-31 23:59:59 UTC
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896  # 0001-01-01, 9999-12-31 (days since 1970)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000}
# nanoseconds in 64 bits span years 1677-2262 only: there, just DuckDB's infinities (the largest values)
_NS_FIRST, _NS_LAST = -(2**63) + 2, 2**63 - 2


def run_sql(
    settings: Settings, query: str, *, timeout_s: float | None = None, memory_mb: int | None = None
) -> pl.DataFrame:
    """The result of one DuckDB SQL query over the lake's tables, each registered only when
    the query names it; an empty table has its schema and no rows. The time and memory limits
    default to settings.sql_timeout_s and settings.sql_memory_mb, and must be within their ranges
    (check_sql_limits); a result larger than half the memory limit is refused too."""
    if not query.strip():
        raise ClickstreamError("empty SQL query")
    timeout_s = settings.sql_timeout_s if timeout_s is None else timeout_s
    memory_mb = settings.sql_memory_mb if memory_mb is None else memory_mb
    check_sql_limits(timeout_s, memory_mb)
    named = [name for name in SQL_TABLES if re.search(rf"\b{name}\b", query, re.IGNORECASE)]
    folder = Path(tempfile.mkdtemp(prefix="clickstream-sql-"))  # private (0700), removed after the query
    try:
        with LimitedProcess(timeout_s, memory_mb) as child:  # starts now: its imports overlap the lookups below
            request = _QueryRequest(query, _tables(settings, named), memory_mb, str(folder / RESULT_FILE))
            has_result = child.call(_open_sandbox, _run_query, request)
        return _read_result(folder / RESULT_FILE) if has_result else _polars().DataFrame()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_limited(
    work: Callable[[Any], Any],
    payload: Any,
    *,
    timeout_s: float,
    memory_mb: int,
    setup: Callable[[Any], Any] | None = None,
    what: str = "SQL query",
) -> Any:
    """work(setup(payload)) (work(payload) without setup) in a child process: setup first, then work
    under the address-space cap and the time limit of `LimitedProcess`; returns what work returned.
    The functions must be importable by name and payload and result picklable. The limits' failures,
    and every ClickstreamError the child raised, come back as one-line ClickstreamErrors naming `what`."""
    check_sql_limits(timeout_s, memory_mb)
    with LimitedProcess(timeout_s, memory_mb, what=what) as child:
        return child.call(setup, work, payload)


class LimitedProcess:
    """A child Python process that runs setup(payload) and then work(state) under hard limits.

    Once setup has returned, the child caps its own address space (RLIMIT_AS) at what it then holds
    plus `memory_mb` and SLACK_MB: an allocation past it fails in the child (a MemoryError in Python,
    an out-of-memory error in DuckDB, or the child ends on a signal), never in this process. The time
    limit starts then too: when it passes, the child is killed (SIGKILL), whatever it is running.
    Messages come back over a pipe of their own; the child's output goes nowhere, and what it writes
    to stderr is read only to explain a child that failed without a word (a bug)."""

    def __init__(self, timeout_s: float, memory_mb: int, *, what: str = "SQL query") -> None:
        from multiprocessing.connection import Connection

        self.timeout_s, self.memory_mb, self.what = timeout_s, memory_mb, what
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(write_end)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                pass_fds=(write_end,),
                # glibc reserves 64 MiB of address space per malloc arena and thread: two arenas are
                # enough for a process whose heavy work happens in DuckDB's and Arrow's allocators
                env={**os.environ, "MALLOC_ARENA_MAX": "2"},
            )
        except BaseException:
            os.close(read_end)
            self._stderr.close()
            raise
        finally:
            os.close(write_end)
        self._messages = Connection(read_end, writable=False)

    def __enter__(self) -> LimitedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the child if it still runs, and free the pipe and the files."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._messages.close()
        self._stderr.close()

    def call(self, setup: Callable[[Any], Any] | None, work: Callable[[Any], Any], payload: Any) -> Any:
        """work(setup(payload)) in the child, within the limits (once per LimitedProcess)."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            pickle.dump((setup, work, payload, self.memory_mb), stdin)
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child has ended already: its outcome says how
        ready = self._receive(STARTUP_S)
        if ready is None:
            raise ClickstreamError(f"{self.what} stopped: its process did not start within {STARTUP_S:g} s")
        if ready[0] != "ready":
            return self._outcome(ready)
        outcome = self._receive(self.timeout_s)
        if outcome is None:  # past the time limit: killed, whatever it runs (a C call that ignores interrupts too)
            self._process.kill()
            raise ClickstreamError(
                f"{self.what} stopped at its time limit of {self.timeout_s:g} s (--timeout, CLICKSTREAM_SQL_TIMEOUT_S)"
            )
        return self._outcome(outcome)

    def _receive(self, timeout_s: float) -> tuple[Any, ...] | None:
        """The child's next message; None when none came within timeout_s; ("ended",) when it ended first."""
        if not self._messages.poll(timeout_s):
            return None
        try:
            return self._messages.recv()
        except (EOFError, OSError):
            return ("ended",)

    def _outcome(self, message: tuple[Any, ...]) -> Any:
        kind = message[0]
        if kind == "ok":
            self._wait_for_exit()
            return message[1]
        if kind == "error":
            raise ClickstreamError(message[1])
        if kind == "memory":
            raise ClickstreamError(over_memory(self.memory_mb, self.what))
        if kind == "storage":
            raise StorageError(
                f"{self.what} stopped: cannot write: {message[1]} (its result goes to a temporary folder "
                f"in {tempfile.gettempdir()}: free space there or point TMPDIR elsewhere)"
            )
        if kind == "bug":
            raise RuntimeError(f"the {self.what} process failed:\n{message[1]}")
        code = self._wait_for_exit()
        if code < 0:  # a signal: past its address space in code that cannot fail softly, or killed from outside
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            raise ClickstreamError(
                over_memory(self.memory_mb, self.what, f"its process ended on {name}, most likely as it needed more")
            )
        self._stderr.seek(0)
        said = self._stderr.read()[-4000:].decode(errors="replace")
        raise RuntimeError(f"the {self.what} process ended with exit code {code}:\n{said}")

    def _wait_for_exit(self) -> int:
        try:
            return self._process.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()


_CHILD_CODE = "import sys; from clickstream.pipeline.serve.sql import _child_main; _child_main(int(sys.argv[1]))"


def _child_main(fd: int) -> None:
    """The child of LimitedProcess: reads (setup, work, payload, memory_mb) from stdin and reports
    ("ready",) once setup returned, then ("ok", result) or ("error" | "memory" | "bug", text)."""
    import resource
    from multiprocessing.connection import Connection

    messages = Connection(fd, readable=False)
    try:
        setup, work, payload, memory_mb = pickle.load(sys.stdin.buffer)
        state = setup(payload) if setup is not None else payload
        messages.send(("ready",))
        cap = _address_space() + (memory_mb + SLACK_MB) * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)  # never above a cap set from outside
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        result = work(state)
    except MemoryError:
        messages.send(("memory",))
    except ClickstreamError as error:
        messages.send(("error", str(error)))
    except Exception as error:
        reason = StorageError.reason(error)  # its temporary result file on a full disk, say
        messages.send(("storage", reason) if reason is not None else ("bug", traceback.format_exc()))
    else:
        messages.send(("ok", result))
    finally:
        messages.close()


def _address_space() -> int:
    """This process's virtual memory size in bytes (Linux: /proc/self/status VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


# ---- the query, in the child -------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """How the child opens one table: a Delta table's location and version, or Arrow IPC bytes."""

    uri: str | None = None
    version: int | None = None
    storage_options: dict[str, str] | None = None
    ipc: bytes | None = None


@dataclass(frozen=True)
class _QueryRequest:
    query: str
    tables: dict[str, _Table]
    memory_mb: int
    result_path: str


def _open_sandbox(request: _QueryRequest) -> tuple[duckdb.DuckDBPyConnection, _QueryRequest]:
    """The child's connection with the request's tables registered and the sandbox locked."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset  # the Delta tables' datasets
    from deltalake import DeltaTable

    pa.set_cpu_count(THREADS)
    pa.set_io_thread_count(THREADS)
    # the limit is shared: half for the engine's working memory, half for the result it returns
    con = duckdb.connect(":memory:", config={"threads": THREADS, "memory_limit": f"{request.memory_mb // 2}MiB"})
    try:
        con.execute("SET temp_directory = ''")  # no spilling: the memory limit is the limit
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, as the lake holds them
        for name, table in request.tables.items():
            if table.ipc is not None:
                con.register(name, pa.ipc.open_stream(table.ipc).read_all())
            else:
                delta = DeltaTable(table.uri, version=table.version, storage_options=table.storage_options)
                con.register(name, delta.to_pyarrow_dataset())
        for statement in _SANDBOX:
            con.execute(statement)
    except duckdb.Error as error:
        raise ClickstreamError(f"SQL error: {_first_line(error)} (tables: {', '.join(SQL_TABLES)})") from None
    return con, request


def _run_query(state: tuple[duckdb.DuckDBPyConnection, _QueryRequest]) -> bool:
    """Run the query and write its result as an Arrow IPC file to request.result_path; False when the
    last statement has no result. DuckDB's errors become one line."""
    import duckdb

    con, request = state
    try:
        relation = con.sql(request.query)
        if relation is None:
            return False
        as_text: set[int] = set()
        while (out_of_range := _write_result(relation, as_text, request)) is not None:
            as_text.add(out_of_range)  # a date or timestamp no output can show: again, that column as text
        return True
    except duckdb.OutOfMemoryException:
        raise MemoryError from None
    except duckdb.InterruptException:  # not sent by this code; a guard for DuckDB's own interruptions
        raise ClickstreamError("SQL query interrupted") from None
    except duckdb.PermissionException as error:
        raise ClickstreamError(
            f"SQL error: {_first_line(error)}; queries read only the lake's tables ({', '.join(SQL_TABLES)})"
        ) from None
    except duckdb.Error as error:
        raise ClickstreamError(f"SQL error: {_first_line(error)} (tables: {', '.join(SQL_TABLES)})") from None
    finally:
        con.close()


def _write_result(relation: duckdb.DuckDBPyRelation, as_text: set[int], request: _QueryRequest) -> int | None:
    """Write the relation, made readable (`_readable`, the columns `as_text` as text), batch by batch as
    an Arrow IPC file; a ClickstreamError once it passes half the memory limit. Returns the position of
    the first column found holding a date or timestamp outside years 1-9999 (then the file is not whole),
    None when the file is written."""
    import pyarrow as pa

    readable, dated = _readable(relation, as_text)
    reader = readable.to_arrow_reader(_BATCH_ROWS)
    size, limit = 0, request.memory_mb // 2 * 2**20
    with pa.OSFile(request.result_path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            for position in dated:
                if _outside_years(batch.column(position)):
                    return position
            size += batch.nbytes
            if size > limit:
                raise ClickstreamError(over_memory(request.memory_mb, "SQL query", "its result needs more"))
            writer.write_batch(batch)
    return None


def _readable(relation: duckdb.DuckDBPyRelation, as_text: set[int]) -> tuple[duckdb.DuckDBPyRelation, list[int]]:
    """The relation with unique column names (DuckDB's `_1`, `_2` suffixes) and every column of a type
    outside _KEPT_TYPES (or in `as_text`) cast to VARCHAR; and the positions of the kept columns that hold
    a date or timestamp. The relation itself when nothing changes."""
    names, used, items, dated = relation.columns, set(relation.columns), [], []
    seen: set[str] = set()
    changed = False
    for position, (name, kind) in enumerate(zip(names, relation.types, strict=True)):
        alias = name
        if name in seen:
            suffix = 1
            while f"{name}_{suffix}" in used:
                suffix += 1
            alias = f"{name}_{suffix}"
            used.add(alias)
        seen.add(alias)
        readable = _type_is_readable(kind)
        text = position in as_text or not readable
        column = f"CAST(#{position + 1} AS VARCHAR)" if text else f"#{position + 1}"
        items.append(f'{column} AS "{alias.replace(chr(34), chr(34) * 2)}"')
        changed |= text or alias != name
        if not text and _type_has_dates(kind):
            dated.append(position)
    return (relation.project(", ".join(items)) if changed else relation), dated


def _children(kind: Any) -> list[Any]:
    """The types inside a nested DuckDB type (list, struct, map, array)."""
    return [child for _, child in kind.children if hasattr(child, "id")] if kind.id in _NESTED_TYPES else []


def _type_is_readable(kind: Any) -> bool:
    if kind.id in _NESTED_TYPES:
        return all(_type_is_readable(child) for child in _children(kind))
    return kind.id in _KEPT_TYPES or kind.id in _DATED_TYPES


def _type_has_dates(kind: Any) -> bool:
    return kind.id in _DATED_TYPES or any(_type_has_dates(child) for child in _children(kind))


def _outside_years(array: pa.Array) -> bool:
    """Whether any date or timestamp in `array` (nested values too) is outside years 1-9999."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        if pa.types.is_date32(kind):
            first, last, values = _FIRST_DAY, _LAST_DAY, array.cast(pa.int32())
        elif pa.types.is_timestamp(kind) and kind.unit == "ns":
            first, last, values = _NS_FIRST, _NS_LAST, array.cast(pa.int64())
        else:
            unit = "ms" if pa.types.is_date64(kind) else kind.unit
            per = _PER_SECOND[unit]
            first, last, values = _FIRST_SECOND * per, (_LAST_SECOND + 1) * per - 1, array.cast(pa.int64())
        low, high = pc.min_max(values).values()
        return low.is_valid and (low.as_py() < first or high.as_py() > last)
    if pa.types.is_struct(kind):
        return any(_outside_years(field) for field in array.flatten())
    if pa.types.is_map(kind):
        return _outside_years(array.keys) or _outside_years(array.items)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _outside_years(array.flatten())
    return False


# ---- in this process -----------------------------------------------------------------------------


def _tables(settings: Settings, named: list[str]) -> dict[str, _Table]:
    """How the child opens each named table: a Delta table at its current version (a LakeFormatError
    here for a table in the old layout), or as Arrow IPC bytes: an empty table with its schema while it
    was never written, and `models` read from the registry in this process (MLflow stays out of the child)."""
    from clickstream.pipeline.core.lake import TABLE_SCHEMAS, Lake

    lake = Lake(settings.lake, settings.buckets)
    tables = {}
    for name in named:
        if name == "models":
            tables[name] = _Table(ipc=_ipc(_registry_table(settings)))
            continue
        delta = lake.table(name)
        if delta is None:
            tables[name] = _Table(ipc=_ipc(_polars().DataFrame(schema=TABLE_SCHEMAS[name]).to_arrow()))
        else:
            uri, options = lake.table_uri(name), lake.storage_options
            tables[name] = _Table(uri=uri, version=delta.version(), storage_options=options)
    return tables


def _ipc(table: pa.Table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _registry_table(settings: Settings) -> pa.Table:
    """`models`: every registered version (empty, and no store created, while there is none)."""
    # imported here, not at the top: only a query naming `models` pays for MLflow and torch
    from clickstream.pipeline.core.tracking import store_is_missing
    from clickstream.pipeline.serve.history import VERSIONS, model_versions

    pl = _polars()
    versions = pl.DataFrame(schema=VERSIONS) if store_is_missing(settings.tracking_uri) else model_versions(settings)
    return versions.to_arrow()


def _read_result(path: Path) -> pl.DataFrame:
    """The child's Arrow IPC file as a polars frame (a ClickstreamError for a column polars cannot take)."""
    import pyarrow as pa

    pl = _polars()
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    try:
        return pl.from_arrow(table)  # type: ignore[return-value]
    except (pl.exceptions.PolarsError, pa.ArrowException, pl.exceptions.PanicException) as error:
        raise ClickstreamError(
            f"SQL result cannot be shown: {_first_line(error)}; CAST the column to VARCHAR in the query"
        ) from None


def _polars() -> Any:
    import polars

    return polars


def over_memory(memory_mb: int, what: str = "SQL query", needs: str = "it needs more") -> str:
    """The one line for a query past its memory limit; `needs` says what ("its result needs more")."""
    return (
        f"{what} stopped: {needs} than its memory limit of {memory_mb:,} MiB "
        "(--memory-mb, CLICKSTREAM_SQL_MEMORY_MB); aggregate, filter or add LIMIT"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
