"""Lake writers as real child processes, held at a chosen point, for the tests of concurrent commits.

Every lake write is one `Lake.commit`, which ends in one delta-rs commit call: `deltalake.write_deltalake`
(data and commit in one) or `DeltaTable.create_write_transaction` (the commit of data files written
before it), looked up on the `deltalake` module or class when it is made. `python tests/lake_writers.py
SPEC` runs one stage, or the real `clickstream` CLI, with both wrapped in the child only (no hook in
the pipeline's code), so that the child stops and waits for a line on stdin at one moment:

- "start": before the stage begins (everything imported): children released together start at once;
- "commit": at its `nth` commit to `table`, when the table version it builds on is read and its data
  written (write_deltalake: delta-rs has pulled the last of the rows), only the commit itself left: a
  commit another writer makes meanwhile is one it has to reconcile with (both land, or it fails with
  LakeConflictError);
- "after": just after its `nth` commit to `table` returns: committed, nothing after it done yet (not
  even `Lake.commit` telling which version it made).

The child prints `PAUSED <moment>` when it stops; `held` yields it as a `Held`, whose `go()` lets
it go on and `finish()` returns how it ended. A stage's ClickstreamError ends the child with exit
code 2 and the one line `<ErrorClass>: <message>` on stderr (the CLI prints its own one line).

`run_stage` runs the same stages in-process. Besides ingest, sequences and score (with a
deterministic stand-in model), stage "scores" commits `scores_rows` for a date range `times` times
over (replacing those dates, or with `whole` every row), printing one JSON line per commit: its
version, or the LakeConflictError that refused it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

DEADLINE_S = 180
MOMENTS = ("start", "commit", "after")
ROWS_PER_DATE = 300


@dataclass(frozen=True)
class StandInScorer:
    """A deterministic scorer without torch or MLflow (quick to import in a child): the score depends
    on n_events and the version, so two versions score every session differently."""

    model_version: str
    model_name: str = "stand-in"

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        n_events = sequences.get_column("n_events").to_numpy()
        return ((n_events % 7 + int(self.model_version)) / 10).astype(np.float32)


def scores_rows(first: dt.date, last: dt.date, tag: str, rows: int = ROWS_PER_DATE) -> pl.DataFrame:
    """`rows` rows of the scores table on every date of [first, last], each tagged `tag` (model_version)."""
    days = pl.date_range(first, last, eager=True)
    frame = pl.DataFrame({"date": days}).join(pl.DataFrame({"n": pl.int_range(rows, eager=True)}), how="cross")
    start = pl.col("date").cast(pl.Datetime("us", "UTC")) + pl.duration(seconds=pl.col("n"))
    return frame.select(
        session_id=pl.format("{}-{}", pl.col("date"), pl.col("n")),
        cookie_id=pl.format("c{}", pl.col("n") % 7),
        session_start=start,
        n_events=(pl.col("n") % 5 + 1).cast(pl.Int32),
        score=(pl.col("n") / rows).cast(pl.Float32),
        model_name=pl.lit("writer"),
        model_version=pl.lit(tag),
        scored_at=pl.lit(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        date=pl.col("date"),
    )


def run_stage(stage: str, settings: Any, **args: Any) -> None:
    """Run one stage on `settings` with JSON-able arguments (the same call in-process and in a child)."""
    if stage == "ingest":
        from clickstream.pipeline.ingest.ingest import ingest_files

        day = dt.date.fromisoformat(args["ingestion_date"])
        ingest_files(
            settings, "yoochoose", [Path(p) for p in args["files"]], [Path(p) for p in args["buys"]], ingestion_date=day
        )
    elif stage == "sequences":
        from clickstream.features.sequences import build_sequences

        build_sequences(settings, *(_date(args.get(key)) for key in ("start", "end")))
    elif stage == "score":
        from clickstream.pipeline.serve.scoring import score_with

        days = [dt.date.fromisoformat(d) for d in args["days"]]
        score_with(settings, StandInScorer(args["version"]), days, args.get("bucket"))
    elif stage == "scores":
        _commit_scores(settings.lake, args["first"], args["last"], args["tag"], args.get("times", 1), args.get("whole"))
    else:
        raise ValueError(f"unknown stage {stage!r}")


def _date(value: str | None) -> dt.date | None:
    return None if value is None else dt.date.fromisoformat(value)


def _commit_scores(root: str, first: str, last: str, tag: str, times: int, whole: bool | None) -> None:
    """Commit `scores_rows(first, last, tag/n)` for n < times, replacing those dates (`whole`: every row)."""
    from clickstream.pipeline.core.errors import LakeConflictError
    from clickstream.pipeline.core.lake import Lake, dates_predicate

    lake, start, end = Lake(root), dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    for n in range(times):
        rows = scores_rows(start, end, f"{tag}/{n}")
        # a date at a time: the commit is made of several frames (and files), as the stages' are
        frames = (part for _, part in rows.group_by("date", maintain_order=True))
        try:
            replace = None if whole else dates_predicate(start, end)
            metadata = {"writer": tag, "commit": n}
            version = lake.commit("scores", frames, replace=replace, stage="test", metadata=metadata)
            outcome: dict[str, object] = {"commit": n, "version": version}
        except LakeConflictError as error:
            outcome = {"commit": n, "conflict": str(error)}
        print(json.dumps(outcome), flush=True)


# ---- the child, as the test drives it ----------------------------------------------


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The only line on stderr (the test fails when there are more)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]

    def outcomes(self) -> list[dict[str, Any]]:
        """The JSON lines of a "scores" run, in commit order."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


class Held:
    """A child stopped at its pause point."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self.child = child

    def go(self) -> None:
        assert self.child.stdin is not None
        self.child.stdin.write("go\n")
        self.child.stdin.flush()

    def finish(self) -> Finished:
        stdout, stderr = self.child.communicate(timeout=DEADLINE_S)
        return Finished(self.child.returncode, stdout, stderr)

    def resume(self) -> Finished:
        self.go()
        return self.finish()


@contextlib.contextmanager
def held(
    root: str,
    *,
    moment: str,
    table: str | None = None,
    nth: int = 1,
    stage: str | None = None,
    cli: list[str] | None = None,
    home: str | Path | None = None,
    **args: Any,
) -> Iterator[Held]:
    """While open, a child running `stage` (with `args`) or `clickstream CLI...` on lake `root`, held
    at `moment` (of its `nth` write to `table`); yielded once it is there. A child still running on
    exit is killed; it is always reaped."""
    assert moment in MOMENTS and (moment == "start" or table is not None) and (stage is None) != (cli is None)
    spec = {
        "root": root,
        "home": str(home or tempfile.mkdtemp(prefix="writer-home-")),
        "moment": moment,
        "table": table,
        "nth": nth,
        "stage": stage,
        "cli": cli,
        "args": args,
    }
    Path(spec["home"]).mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, __file__, json.dumps(spec)],
        cwd=spec["home"],
        env={**os.environ, "CLICKSTREAM_HOME": spec["home"]},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        line = child.stdout.readline()  # "" when the child ends without pausing
        if line.rstrip("\n") != f"PAUSED {moment}":
            child.kill()
            _, stderr = child.communicate(timeout=DEADLINE_S)
            raise AssertionError(f"child never paused at {moment} (printed {line!r}): {stderr[-3000:]}")
        yield Held(child)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(DEADLINE_S)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def run_child(root: str, *, stage: str | None = None, cli: list[str] | None = None, **args: Any) -> Finished:
    """`stage` or the CLI in a child, start to end (the child holds at its start only until told to go)."""
    with held(root, moment="start", stage=stage, cli=cli, **args) as child:
        return child.resume()


def _pause(moment: str) -> None:
    print(f"PAUSED {moment}", flush=True)
    sys.stdin.readline()


def _hold_writes(table: str, nth: int, moment: str) -> None:
    """Wrap this process's delta-rs commit calls so that its `nth` commit to `table` pauses at `moment`.

    A commit is one call of `deltalake.write_deltalake` (data and commit in one) or of
    `DeltaTable.create_write_transaction` (the commit of data files written before it), whichever the
    lake uses."""
    import deltalake
    import pyarrow as pa

    real_write, real_transaction = deltalake.write_deltalake, deltalake.DeltaTable.create_write_transaction
    commits = 0

    def held_here(table_or_uri: Any) -> bool:
        nonlocal commits
        uri = str(getattr(table_or_uri, "table_uri", table_or_uri))  # a URI or a DeltaTable
        if uri.rstrip("/").rsplit("/", 1)[-1] != table:
            return False
        commits += 1
        return commits == nth

    def write_deltalake(table_or_uri: Any, data: Any, *rest: Any, **options: Any) -> None:
        if not held_here(table_or_uri):
            return real_write(table_or_uri, data, *rest, **options)
        if moment == "commit":
            source = pa.RecordBatchReader.from_stream(data)

            def batches() -> Iterator[pa.RecordBatch]:
                yield from source
                _pause(moment)  # delta-rs asks for more after the last batch: the end, not yet told

            data = pa.RecordBatchReader.from_batches(source.schema, batches())
        real_write(table_or_uri, data, *rest, **options)
        if moment == "after":
            _pause(moment)
        return None

    def create_write_transaction(self: Any, *rest: Any, **options: Any) -> None:
        if not held_here(self):
            return real_transaction(self, *rest, **options)
        if moment == "commit":
            _pause(moment)
        real_transaction(self, *rest, **options)
        if moment == "after":
            _pause(moment)
        return None

    deltalake.write_deltalake = write_deltalake
    deltalake.DeltaTable.create_write_transaction = create_write_transaction  # type: ignore[method-assign]


def _child(spec: dict[str, Any]) -> None:
    from clickstream.pipeline.core.config import load_settings
    from clickstream.pipeline.core.errors import ClickstreamError
    from clickstream.pipeline.orchestrate.cli import main

    modules = {
        "ingest": "clickstream.pipeline.ingest.ingest",
        "sequences": "clickstream.features.sequences",
        "score": "clickstream.pipeline.serve.scoring",
    }
    if spec["stage"] in modules:  # imported before the child says it is held: its run is the stage alone
        importlib.import_module(modules[spec["stage"]])
    if spec["moment"] == "start":
        _pause("start")
    else:
        _hold_writes(spec["table"], spec["nth"], spec["moment"])
    if spec["cli"] is not None:
        sys.argv = ["clickstream", *spec["cli"]]
        main()
        return
    settings = load_settings(lake=spec["root"], home=spec["home"], environ={})
    try:
        run_stage(spec["stage"], settings, **spec["args"])
    except ClickstreamError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
