"""The `clickstream` command line: thin wrappers that parse flags, build `Settings`,
call one stage function and print its one-line summary (or, with --json, the same facts as
one JSON object).

Heavy libraries (polars, torch, mlflow, airflow) are imported inside the commands,
so `clickstream --help` answers instantly. A `ClickstreamError` becomes a one-line
message on stderr and exit code 2; anything else is a bug and keeps its traceback.
No shell completion is offered (`add_completion=False`): there is no --install-completion.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import os
import sys
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer

from clickstream.pipeline.core.config import (
    SQL_MEMORY_MAX_MB,
    SQL_MEMORY_MIN_MB,
    SQL_TIMEOUT_MAX_S,
    Settings,
    load_settings,
)
from clickstream.pipeline.core.errors import ClickstreamError, NoDataError, StorageError
from clickstream.pipeline.ingest.formats import FORMATS, GENERATED

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="clickstream",
    help="Raw click logs -> events -> sequences -> buying-intent LSTM -> scored sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[env X, default Y]" is text, not markup
    context_settings=HELP_OPTIONS,
)


def parse_date(value: str | dt.date | None, flag: str) -> dt.date | None:
    """A YYYY-MM-DD flag value as a date; a ClickstreamError names the flag otherwise."""
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ClickstreamError(f"{flag} {value!r} is not a date (expected YYYY-MM-DD)") from None


def date_option(flag: str, help: str) -> Any:
    """An option that takes a day: typed as a date, shown as DATE in help, and a value that is no
    YYYY-MM-DD day is a one-line error naming the flag."""
    return typer.Option(flag, parser=functools.partial(parse_date, flag=flag), metavar="DATE", help=help)


LakeOpt = Annotated[
    str | None,
    typer.Option("--lake", help="Lake root: a path or fsspec URL [env CLICKSTREAM_LAKE, default ./lake]."),
]
StartOpt = Annotated[dt.date | None, date_option("--start", "First day, YYYY-MM-DD (inclusive).")]
EndOpt = Annotated[dt.date | None, date_option("--end", "Last day, YYYY-MM-DD (inclusive).")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the summary as one JSON object on stdout instead of a line.")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model URI: models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model or a run id "
        "[default models:/clickstream-buy-intent@champion].",
    ),
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum epochs of one training run.")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Write to this file (outside the lake, replaced atomically) instead of stdout."),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why the champion changes (kept in the history).")]


RawFormat = StrEnum("RawFormat", {name: name for name in FORMATS})  # --format choices: the registry's
GenerateFormat = StrEnum("GenerateFormat", {name: name for name in GENERATED})


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train.")]


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _print_version(show: bool) -> None:
    """--version: the installed package's version, before any command or setting is looked at."""
    if show:
        typer.echo(f"clickstream {package_version('clickstream')}")
        raise typer.Exit()


@app.callback()
def _clickstream(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Options of `clickstream` itself, before any command (the app's help text is the Typer's)."""


def _settings(lake: str | None) -> Settings:
    return load_settings(lake=lake)


FIRST_RUN = {
    "events": "run `clickstream ingest` first",
    "sequences": "run `clickstream sequences` first",
    "scores": "run `clickstream score` first",
}


def _require_data(
    settings: Settings,
    table: str,
    first: dt.date | None,
    last: dt.date | None,
    version: int | None = None,
    *,
    rebuilds: str | None = None,
) -> None:
    """Fail in a second, before torch and MLflow load, when [first, last] is reversed or holds no
    day of `table` (at `version`), naming the days it does hold. A day of `rebuilds` in the window
    is work too (a rebuild clears what its source no longer has)."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.serve.output import format_days

    lake = Lake(settings.lake, settings.buckets)
    held = lake.dates(table, version)
    what = f"{table}/" if version is None else f"{table}/ version {version}"
    if first is not None and last is not None and first > last:
        raise ClickstreamError(
            f"--start {first} is after --end {last}; {what} of lake {lake} holds {format_days(held)}"
        )
    days = [*held, *(lake.dates(rebuilds) if rebuilds else [])]
    if any((first is None or day >= first) and (last is None or day <= last) for day in days):
        return
    if not held:
        lake.require_dates(table, None, None, FIRST_RUN[table], version)  # raises: the table is empty
    raise NoDataError(f"no {table}/ rows {_window(first, last)}; {what} of lake {lake} holds {format_days(held)}")


def _window(first: dt.date | None, last: dt.date | None) -> str:
    """[first, last] in words, either end open."""
    if first is None:
        return f"up to {last}"
    return f"from {first} on" if last is None else f"for {first}..{last}"


def _require_model(settings: Settings, model: str | None) -> None:
    """Fail in a second, before MLflow loads (or creates a store), when no model can be there."""
    from clickstream.pipeline.core.tracking import require_store

    require_store(settings.tracking_uri, model or settings.champion_uri)


def _done(summary: object, as_json: bool = False) -> None:
    """Print a stage's summary: its line, or with --json its facts as one JSON object."""
    if as_json:
        from clickstream.pipeline.serve.output import summary_json

        typer.echo(summary_json(summary))
        return
    text = str(summary)
    if text:  # "" when the command already wrote its summary to stderr (data on stdout)
        typer.echo(text)


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic logs to.")],
    sessions: Annotated[int, typer.Option(min=1, help="Number of sessions.")] = 10_000,
    days: Annotated[int, typer.Option(min=1, help="Days the sessions spread over.")] = 7,
    start_date: Annotated[
        dt.date,
        date_option("--start-date", "First day, YYYY-MM-DD (1990-01-01 or later; the last day at most 9999-12-24)."),
    ] = dt.date(2014, 4, 1),
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    format: Annotated[GenerateFormat, typer.Option("--format", help="Format of the files written.")] = GenerateFormat(
        "yoochoose"
    ),
    world: Annotated[str, typer.Option(help="Shoppers and buying rule: default, counts, appeal or order.")] = "default",
    json: JsonOpt = False,
) -> None:
    """Write synthetic logs with YOOCHOOSE's statistics and a known buying signal (no lake involved)."""
    from clickstream.pipeline.synthetic.generate import generate_logs

    summary = generate_logs(
        out_dir, sessions=sessions, days=days, start_date=start_date, seed=seed, fmt=format.value, world=world
    )
    _done(summary, json)


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="Raw log files (plain or .gz).", metavar="FILE")],
    format: Annotated[RawFormat, typer.Option("--format", help="Format of the raw files read.")],
    buys: Annotated[
        list[Path] | None, typer.Option("--buys", help="YOOCHOOSE buys file (repeatable).", metavar="FILE")
    ] = None,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Validate raw logs into events/ (bad rows to quarantine/)."""
    keep_freed_memory()
    from clickstream.pipeline.ingest.ingest import ingest_files

    _done(ingest_files(_settings(lake), format.value, files, buys or []), json)


@app.command()
def sequences(start: StartOpt = None, end: EndOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> None:
    """Build per-session sequences from events/ into sequences/ (a day whose events are gone loses
    its sequences)."""
    settings = _settings(lake)
    _require_data(settings, "events", start, end, rebuilds="sequences")
    from clickstream.features.sequences import build_sequences

    _done(build_sequences(settings, start, end), json)


@app.command()
def train(
    start: StartOpt = None,
    end: EndOpt = None,
    epochs: EpochsOpt = None,
    device: DeviceOpt = Device.auto,
    promote: Annotated[bool, typer.Option(help="Make it champion if it beats the current one.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint of this window.")] = False,
    resume_or_restart: Annotated[
        bool,
        typer.Option(
            help="Like --resume, but a checkpoint that cannot be continued (damaged, another run's) "
            "is passed over with a warning and training starts clean."
        ),
    ] = False,
    gpus: Annotated[
        int, typer.Option(min=1, help="Training processes on this machine: one per GPU (CPU ranks with --device cpu).")
    ] = 1,
    nodes: Annotated[int, typer.Option(min=1, help="Machines training together (each runs this command).")] = 1,
    node_rank: Annotated[
        int, typer.Option(min=0, help="This machine's place among --nodes: 0 leads (reads, registers).")
    ] = 0,
    rendezvous: Annotated[
        str | None, typer.Option(help="HOST:PORT where the --nodes machines meet (torchrun's c10d rendezvous).")
    ] = None,
    as_of: Annotated[
        int | None,
        typer.Option(
            "--as-of",
            min=0,
            help="Train on this version of the sequences table (see `clickstream lake history sequences`).",
        ),
    ] = None,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Train the LSTM on sessions starting in the window and register it in MLflow
    (the tracking store is MLFLOW_TRACKING_URI). With --nodes, run it on every machine: node 0
    prepares, leads and registers; the others train with it and print what they did."""
    from clickstream.models.training.nodes import Nodes

    machines = Nodes(nodes, node_rank, rendezvous)
    machines.check()
    if node_rank > 0:
        from clickstream.models.training.distributed import check_ranks, join_ranks

        check_ranks(gpus, device.value)
        _done(join_ranks(ranks=gpus, device=device.value, nodes=machines), json)
        return
    settings = _settings(lake)
    _require_data(settings, "sequences", start, end, as_of)
    from clickstream.models.training.fit import RESUME_OR_RESTART
    from clickstream.models.training.train import train_and_register

    summary = train_and_register(
        settings,
        start,
        end,
        epochs=epochs,
        device=device.value,
        promote=promote,
        resume=RESUME_OR_RESTART if resume_or_restart else resume,
        gpus=gpus,
        nodes=machines,
        as_of=as_of,
    )
    _done(summary, json)


@app.command()
def tune(
    trials: Annotated[
        int, typer.Option(min=1, help="Trials in all; those an earlier start of the same search finished count.")
    ] = 20,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            min=1,
            help="Start no new trial after this many seconds; the running trial finishes (no limit if not given).",
        ),
    ] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    epochs: EpochsOpt = None,
    device: DeviceOpt = Device.auto,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Search model and training settings on the window's validation days; `train` uses the best."""
    settings = _settings(lake)
    _require_data(settings, "sequences", start, end)
    from clickstream.models.training.tuning import tune as run_tune

    summary = run_tune(settings, start, end, trials=trials, timeout=time_budget, epochs=epochs, device=device.value)
    _done(summary, json)


@app.command()
def score(
    start: StartOpt = None, end: EndOpt = None, model: ModelOpt = None, lake: LakeOpt = None, json: JsonOpt = False
) -> None:
    """Score the sessions of those dates into scores/ (models from MLFLOW_TRACKING_URI)."""
    settings = _settings(lake)
    _require_data(settings, "sequences", start, end)
    _require_model(settings, model)
    from clickstream.pipeline.serve.scoring import score_dates

    _done(score_dates(settings, start, end, model), json)


@app.command()
def scores(
    start: StartOpt = None,
    end: EndOpt = None,
    top: Annotated[int | None, typer.Option(min=1, help="Only the N highest scores.")] = None,
    min_score: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Only scores >= X.")] = None,
    cookie: Annotated[str | None, typer.Option(help="Only this cookie's sessions.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    out: OutOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Scored sessions for analysts (by default of the latest day that has scores)."""
    settings = _settings(lake)
    _require_data(settings, "scores", start, end)
    from clickstream.pipeline.serve.analytics import query_scores, write_output

    frame = query_scores(settings, start, end, top=top, min_score=min_score, cookie=cookie, session=session)
    _done(write_output(frame, format.value, out, lake=settings.lake))


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help="DuckDB SQL over tables events, sequences, scores, cookie_intent, quarantine.")
    ],
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    out: OutOpt = None,
    # checked by run_sql (config.check_sql_limits): one line naming the accepted range, nan and inf included
    timeout: Annotated[
        float | None,
        typer.Option(
            help=f"Hard time limit in seconds: the query is stopped when it passes it; > 0 and at most "
            f"{SQL_TIMEOUT_MAX_S:.0f} [env CLICKSTREAM_SQL_TIMEOUT_S, default 60].",
        ),
    ] = None,
    memory_mb: Annotated[
        int | None,
        typer.Option(
            help=f"Memory limit in MiB, {SQL_MEMORY_MIN_MB} to {SQL_MEMORY_MAX_MB} (1 TiB) "
            "[env CLICKSTREAM_SQL_MEMORY_MB, default 2048].",
        ),
    ] = None,
    lake: LakeOpt = None,
) -> None:
    """Run one SQL query over the lake's tables, sandboxed: no files, network or extensions."""
    settings = _settings(lake)
    from clickstream.pipeline.serve.output import check_out, write_output
    from clickstream.pipeline.serve.sql import run_sql

    if out is not None:
        check_out(out, settings.lake)  # before the query, not after it
    frame = run_sql(settings, query, timeout_s=timeout, memory_mb=memory_mb)
    _done(write_output(frame, format.value, out, lake=settings.lake))


@app.command("session")
def session_trace(
    session_id: Annotated[str, typer.Argument(help="The session to explain.")],
    model: ModelOpt = None,
    lake: LakeOpt = None,
) -> None:
    """A session's events in order with the model's running buying intent
    (models from MLFLOW_TRACKING_URI)."""
    settings = _settings(lake)
    from clickstream.pipeline.serve.analytics import explain_session, write_output

    # the lake first: a session it does not hold is one line before MLflow or torch is imported
    _done(write_output(explain_session(settings, session_id, model), "table", None))


@app.command()
def report(
    start: StartOpt = None,
    end: EndOpt = None,
    out: Annotated[Path, typer.Option(help="HTML file to write (outside the lake, replaced atomically).")] = Path(
        "report.html"
    ),
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """One self-contained HTML report with plots of scores, lift and model quality."""
    settings = _settings(lake)
    _require_data(settings, "scores", start, end)
    from clickstream.pipeline.serve.report import write_report

    _done(write_report(settings, start, end, out), json)


class RegistryFormat(StrEnum):
    table = "table"
    json = "json"


@app.command("models")
def models_(
    format: Annotated[RegistryFormat, typer.Option("--format", help="Output format.")] = RegistryFormat.table,
    lake: LakeOpt = None,
) -> None:
    """Registered model versions with their aliases, and every champion decision."""
    from clickstream.pipeline.serve.history import write_registry

    _done(write_registry(_settings(lake), format.value))


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The model version to make champion.")],
    reason: ReasonOpt,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make a version champion by hand, skipping the AUC gate (it must load and take this code's inputs)."""
    from clickstream.models.registry.champion import actor, promote_version

    _done(promote_version(_settings(lake), version, reason, decided_by=actor("cli:promote")), json)


@app.command()
def rollback(reason: ReasonOpt, lake: LakeOpt = None, json: JsonOpt = False) -> None:
    """Move the champion back to the previous champion per the history."""
    from clickstream.models.registry.champion import actor, rollback_champion

    _done(rollback_champion(_settings(lake), reason, decided_by=actor("cli:rollback")), json)


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=2, help="Days of landing data to generate and run.")] = 5,
    sessions_per_day: Annotated[int, typer.Option(min=100, help="Sessions per generated day.")] = 4_000,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """The main job end to end on embedded defaults, through the Airflow DAG."""
    from clickstream.pipeline.orchestrate.demo import run_demo

    _done(run_demo(_settings(lake), days=days, sessions_per_day=sessions_per_day), json)


lake_app = typer.Typer(
    name="lake",
    help="Operate the lake's Delta tables: versions, restore, clean-up, compaction, migration.",
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
)
app.add_typer(lake_app)
LAKE_TABLES = ("events", "quarantine", "sequences", "scores", "cookie_intent")  # pipeline.core.lake.TABLES
LakeTable = StrEnum("LakeTable", {name: name for name in LAKE_TABLES})
TableArg = Annotated[LakeTable, typer.Argument(help="The table.")]


@lake_app.command("history")
def lake_history(
    table: TableArg,
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    lake: LakeOpt = None,
) -> None:
    """The table's versions, newest first: time, operation, stage, batch, rows added."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import history
    from clickstream.pipeline.serve.output import write_output

    settings = _settings(lake)
    versions = history(Lake(settings.lake, settings.buckets), table.value)
    _done(write_output(versions, format.value, None, lake=settings.lake))


@lake_app.command("restore")
def lake_restore(
    table: TableArg,
    version: Annotated[int, typer.Option("--version", min=0, help="The version to bring back (see `lake history`).")],
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make an earlier version the table's content again (as a new version); says what to rebuild."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import restore

    _done(restore(Lake(_settings(lake).lake), table.value, version), json)


@lake_app.command("vacuum")
def lake_vacuum(
    retention_hours: Annotated[
        int, typer.Option(min=0, help="Keep the files of every version this recent (at least 168: 7 days).")
    ] = 168,
    lake: LakeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Delete data files that no version within the retention reads."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import vacuum

    _done(vacuum(Lake(_settings(lake).lake), retention_hours), json)


@lake_app.command("optimize")
def lake_optimize(lake: LakeOpt = None, json: JsonOpt = False) -> None:
    """Compact small data files into larger ones (same rows, fewer files to read)."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import optimize

    _done(optimize(Lake(_settings(lake).lake)), json)


@lake_app.command("migrate")
def lake_migrate(lake: LakeOpt = None, json: JsonOpt = False) -> None:
    """Convert a lake written before its tables were Delta tables, in place (once; safe to repeat)."""
    from clickstream.pipeline.core.lake import Lake
    from clickstream.pipeline.core.maintenance import migrate

    settings = _settings(lake)
    _done(migrate(Lake(settings.lake, settings.buckets)), json)


# Polars' allocator (jemalloc) hands freed memory back to the system within a second. The ingest frees
# and reallocates chunks and dates of the same sizes many times a second, and each page handed back costs
# a fault and a zeroing when it is taken again: kept, an ingest of the YOOCHOOSE files took a tenth less
# CPU, at the same peak memory (benchmarks/RESULTS.md, "ingest"). Not for every command: the tensor load
# of a training, whose allocations vary in size, gained nothing and peaked 0.75 GiB higher.
KEEP_FREED_MEMORY = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def keep_freed_memory() -> None:
    """Set KEEP_FREED_MEMORY for polars, which reads it when it is first imported (in a command, after
    this); a setting the user made in `_RJEM_MALLOC_CONF` comes after it, and wins."""
    own = os.environ.get("_RJEM_MALLOC_CONF", "")
    if not own.startswith(KEEP_FREED_MEMORY):
        os.environ["_RJEM_MALLOC_CONF"] = f"{KEEP_FREED_MEMORY},{own}" if own else KEEP_FREED_MEMORY


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, and so does a
    file system that refuses a write (no space left, read-only, no permission) wherever it happens."""
    from clickstream.pipeline.core.progress import log_to_stderr, quiet_libraries

    quiet_libraries()  # before MLflow is imported: it reads its settings then
    log_to_stderr()
    try:
        app(standalone_mode=False)
        # The process ends next. Moving the heap to the permanent generation spares the interpreter's
        # shutdown collections a walk over every object (over a million after `clickstream demo`:
        # Airflow, MLflow, torch), seconds between the report and the exit (benchmarks/RESULTS.md,
        # "demo"). atexit handlers, thread joins and flushes still run; the OS frees the memory.
        gc.freeze()
    except ClickstreamError as error:
        _fail(str(error))
    except typer.TyperException as error:  # usage errors: unknown flag, missing argument, bad value
        ctx = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        command = f" {ctx.command_path}" if ctx is not None else ""
        # Typer converts values through pydantic, whose messages begin "Value error, "
        message = error.format_message().replace(": Value error, ", ": ")
        _fail(f"{message} (see{command} --help)")
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except Exception as error:  # a full or read-only disk is the machine's state, not a bug
        reason = StorageError.reason(error)
        if reason is None:
            raise
        _fail(f"cannot write: {reason}; the command stopped (free space or make it writable, then run it again)")


def _fail(message: str, code: int = 2) -> None:
    first_line = " ".join(message.split())
    typer.echo(f"error: {first_line}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
