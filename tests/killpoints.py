"""Kill a pipeline stage with SIGKILL at one of its commits, or at any instant, in a real child process.

A stage commits to the lake through `Lake.commit`: one Delta commit per table it writes (ingest:
quarantine then events; sequences: sequences; score: scores then cookie_intent), each one call
that writes the data files, then one `DeltaTable.create_write_transaction` (the atomic creation
of the next `_delta_log/<version>.json`). A plain file beside the lake (the report) is committed
by `os.replace`. `python tests/killpoints.py SPEC` runs one stage with these wrapped, in the child
only (no hook in the pipeline's code: the class attributes are replaced in the child's memory), so
that its Nth commit into a watched folder SIGKILLs the process at one of three moments:

- "before": as `Lake.commit` is called (nothing of that commit written yet);
- "writing": just before the transaction: every data file of the commit written, the log
  untouched; for a plain file, as "before" (the temporary file complete, the target untouched);
- "after": just after `Lake.commit` returns (committed; nothing later done).

It prints `KILLED <target>` first (a table commit's target is the table's URI, a plain file's its
path), so the test knows which commit the kill hit.

`paused_at` instead holds the child just before the transaction of its Nth commit until the test
lets it go: a second writer can commit the same rows meanwhile. `running` starts a child with no hook, for a test that
kills it at an instant of its own choosing. `run_stage` runs the same stage in-process, and
`recorded_commits` lists the targets a clean run commits, in order: the kill points.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clickstream.pipeline.core.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 120
MOMENTS = ("before", "writing", "after")  # of a table commit
FILE_MOMENTS = ("before", "after")  # of a plain file's rename
STARTED = "STARTED"  # what a `running` child prints when everything is imported and the stage begins

OnCommit = Callable[[str, str], None]  # (target, moment)


@dataclass(frozen=True)
class StandInScorer:
    """A deterministic scorer without torch or MLflow (fast to import in a child): the score
    depends on n_events and the version, so two versions score every session differently."""

    model_version: str
    model_name: str = "stand-in"

    def score(self, sequences: pl.DataFrame) -> np.ndarray:
        n_events = sequences.get_column("n_events").to_numpy()
        return ((n_events % 7 + int(self.model_version)) / 10).astype(np.float32)


def run_stage(stage: str, settings: Settings, **args: Any) -> None:
    """Run one stage on `settings` with JSON-able arguments (the same call in-process and in the child)."""
    if stage == "ingest":
        from clickstream.pipeline.ingest.ingest import ingest_files

        day = dt.date.fromisoformat(args["ingestion_date"])
        ingest_files(
            settings, "yoochoose", list(map(Path, args["files"])), list(map(Path, args["buys"])), ingestion_date=day
        )
    elif stage == "sequences":
        from clickstream.features.sequences import build_sequences

        build_sequences(settings, None, None)
    elif stage == "score":
        from clickstream.pipeline.core.lake import Lake
        from clickstream.pipeline.serve.scoring import score_with, scoring_dates

        days = scoring_dates(Lake(settings.lake), dt.date.min, dt.date.max)
        score_with(settings, StandInScorer(args["version"]), days)
    elif stage == "report":
        from clickstream.pipeline.serve.report import write_report

        write_report(settings, None, None, Path(args["out"]))
    else:
        raise ValueError(f"unknown stage {stage!r}")


def _import_stage(stage: str) -> None:
    """Import what `stage` runs, so that a `running` child's stage time is the stage's own."""
    modules = {
        "ingest": "clickstream.pipeline.ingest.ingest",
        "sequences": "clickstream.features.sequences",
        "score": "clickstream.pipeline.serve.scoring",
        "report": "clickstream.pipeline.serve.report",
    }
    __import__(modules[stage])


def _under(target: str, watched: tuple[str, ...]) -> bool:
    return any(target == folder or target.startswith(folder.rstrip("/") + "/") for folder in watched)


def _table_target(table_or_uri: Any) -> str:
    uri = table_or_uri.table_uri if hasattr(table_or_uri, "table_uri") else os.fspath(table_or_uri)
    return str(uri).removeprefix("file://").rstrip("/")


@contextlib.contextmanager
def _hooked(watched: tuple[str, ...], on_commit: OnCommit) -> Iterator[None]:
    """While open, `Lake.commit` (with its transaction) and `os.replace` call on_commit(target, moment)
    at each moment of every commit into `watched` folders."""
    from deltalake import DeltaTable

    from clickstream.pipeline.core.lake import Lake

    real_commit, real_transaction, real_replace = Lake.commit, DeltaTable.create_write_transaction, os.replace

    def commit(lake: Lake, table: str, *args: Any, **kwargs: Any) -> int:
        target = _table_target(lake.table_uri(table))
        if not _under(target, watched):
            return real_commit(lake, table, *args, **kwargs)
        on_commit(target, "before")
        version = real_commit(lake, table, *args, **kwargs)
        on_commit(target, "after")
        return version

    def transaction(delta: DeltaTable, *args: Any, **kwargs: Any) -> None:
        target = _table_target(delta)
        if _under(target, watched):
            on_commit(target, "writing")
        return real_transaction(delta, *args, **kwargs)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        target = os.fspath(dst)
        if not _under(target, watched):
            return real_replace(src, dst, *args, **kwargs)
        on_commit(target, "before")
        on_commit(target, "writing")
        real_replace(src, dst, *args, **kwargs)
        on_commit(target, "after")
        return None

    Lake.commit, DeltaTable.create_write_transaction, os.replace = commit, transaction, replace
    try:
        yield
    finally:
        Lake.commit, DeltaTable.create_write_transaction, os.replace = real_commit, real_transaction, real_replace


@contextlib.contextmanager
def recorded_commits(*watched: str | Path) -> Iterator[list[str]]:
    """While open (in this process), the targets of every commit into `watched` folders, in commit
    order: a table's URI for a table commit, the path for a plain file."""
    targets: list[str] = []

    def record(target: str, moment: str) -> None:
        if moment == "after":
            targets.append(target)

    with _hooked(tuple(str(folder).rstrip("/") for folder in watched), record):
        yield targets


def kill_at(stage: str, settings: Settings, nth: int, moment: str, watched: list[str], **args: Any) -> str:
    """Run `stage` in a child that SIGKILLs itself at `moment` of its `nth` commit (1-based) into
    `watched`; returns the target of that commit. Fails if the child was not killed there."""
    done = subprocess.run(
        _child_command(stage, settings, nth, moment, "kill", watched, args),
        cwd=REPO,
        env=_child_environ(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    killed = [line.removeprefix("KILLED ") for line in done.stdout.splitlines() if line.startswith("KILLED ")]
    assert done.returncode == -signal.SIGKILL and len(killed) == 1, (
        f"child exited {done.returncode} without reaching {moment} commit {nth}: {done.stderr[-2000:]}"
    )
    return killed[0]


@contextlib.contextmanager
def paused_at(
    stage: str, settings: Settings, nth: int, watched: list[str], **args: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """While open, a child running `stage` waits at its `nth` commit into `watched`, just before the
    transaction: it has read the table's version and written the commit's data files, the log is
    untouched. Yields the child and the commit's target (the table's URI). On exit the child goes
    on and must finish its run successfully."""
    child = _popen(_child_command(stage, settings, nth, "writing", "pause", watched, args))
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        line = child.stdout.readline()  # "" when the child ends without pausing
        assert line.startswith("PAUSED "), f"child never paused: {child.wait(DEADLINE_S)} {child.stderr.read()[-2000:]}"
        yield child, line.removeprefix("PAUSED ").rstrip("\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(DEADLINE_S) == 0, child.stderr.read()[-2000:]
    finally:
        _reap(child)


@contextlib.contextmanager
def running(stage: str, settings: Settings, **args: Any) -> Iterator[subprocess.Popen[str]]:
    """While open, a child running `stage` with no hook, yielded once it has imported everything and
    begun the stage: the caller waits for it or kills it (`child.kill()`: SIGKILL, a no-op once it
    has ended). On exit a child still running is killed; it is always reaped."""
    child = _popen(_child_command(stage, settings, 0, "", "run", [], args))
    assert child.stdout is not None and child.stderr is not None
    try:
        line = child.stdout.readline()
        assert line.rstrip("\n") == STARTED, (
            f"child never started: {child.wait(DEADLINE_S)} {child.stderr.read()[-2000:]}"
        )
        yield child
    finally:
        _reap(child)


def _popen(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=_child_environ(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(DEADLINE_S)
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _child_command(
    stage: str, settings: Settings, nth: int, moment: str, action: str, watched: list[str], args: dict[str, Any]
) -> list[str]:
    spec = {
        "stage": stage,
        "lake": settings.lake,
        "home": str(settings.home),
        "nth": nth,
        "moment": moment,
        "action": action,
        "watched": [str(folder).rstrip("/") for folder in watched],
        "args": args,
    }
    return [sys.executable, __file__, json.dumps(spec)]


def _child_environ() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _child(spec: dict[str, Any]) -> None:
    commits = 0

    def on_commit(target: str, moment: str) -> None:
        nonlocal commits
        commits += moment == "before"
        if commits != spec["nth"] or moment != spec["moment"]:
            return
        if spec["action"] == "kill":
            print(f"KILLED {target}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"PAUSED {target}", flush=True)
        sys.stdin.readline()

    settings = load_settings(lake=spec["lake"], home=spec["home"], environ={})
    _import_stage(spec["stage"])
    with _hooked(tuple(spec["watched"]), on_commit):
        if spec["action"] == "run":
            print(STARTED, flush=True)
        run_stage(spec["stage"], settings, **spec["args"])


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
