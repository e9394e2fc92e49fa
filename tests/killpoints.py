"""Kill a pipeline stage with SIGKILL at one of its commits, in a real child process.

Every file a stage commits goes through `os.replace` (Lake.write_file on a local lake,
pipeline.serve.output.replace_file for the report). `python tests/killpoints.py SPEC` runs one
stage with os.replace wrapped so that its Nth call into a watched folder SIGKILLs the
process just "before" the rename (the temporary file is complete, the target untouched) or
just "after" it (the target replaced, every later write not done). It prints
`KILLED <target>` first, so the test knows which file the kill hit. No hook in the
pipeline's code: the wrapping lives in the child only.

`paused_at` instead holds the child at a commit (its locks taken, the rename not done)
until the test lets it go: a second writer can then try the same partition meanwhile.
`run_stage` runs the same stage in-process, and `recorded_commits` lists the targets a
clean run commits, in order: the kill points.
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
MOMENTS = ("before", "after")


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
        ingest_files(settings, "yoochoose", list(map(Path, args["files"])), list(map(Path, args["buys"])),
                     ingestion_date=day)
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


def _watching(watched: tuple[str, ...], on_commit: Callable[[str, str], None]) -> Callable[..., None]:
    """os.replace that calls on_commit(target, moment) before and after each rename into `watched`."""
    real = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        target = os.fspath(dst)
        if not target.startswith(watched):
            return real(src, dst, *args, **kwargs)
        on_commit(target, "before")
        real(src, dst, *args, **kwargs)
        on_commit(target, "after")
        return None

    return replace


@contextlib.contextmanager
def recorded_commits(*watched: str | Path) -> Iterator[list[str]]:
    """While open, the targets of every commit into `watched` folders, in commit order."""
    targets: list[str] = []
    real = os.replace

    def record(target: str, moment: str) -> None:
        if moment == "after":
            targets.append(target)

    os.replace = _watching(tuple(map(str, watched)), record)
    try:
        yield targets
    finally:
        os.replace = real


def kill_at(stage: str, settings: Settings, nth: int, moment: str, watched: list[str], **args: Any) -> str:
    """Run `stage` in a child that SIGKILLs itself `moment` its `nth` commit (1-based) into
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
        f"child exited {done.returncode} without reaching commit {nth}: {done.stderr[-2000:]}"
    )
    return killed[0]


@contextlib.contextmanager
def paused_at(
    stage: str, settings: Settings, nth: int, watched: list[str], **args: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """While open, a child running `stage` waits just before its `nth` commit into `watched`
    (holding whatever lock guards it); yields the child and the commit's target. On exit the
    child goes on and must finish its run successfully."""
    child = subprocess.Popen(
        _child_command(stage, settings, nth, "before", "pause", watched, args),
        cwd=REPO,
        env=_child_environ(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        line = child.stdout.readline()  # "" when the child ends without pausing
        assert line.startswith("PAUSED "), f"child never paused: {child.wait(DEADLINE_S)} {child.stderr.read()[-2000:]}"
        yield child, line.removeprefix("PAUSED ").rstrip("\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(DEADLINE_S) == 0, child.stderr.read()[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE_S)


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
        "watched": watched,
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

    os.replace = _watching(tuple(spec["watched"]), on_commit)
    settings = load_settings(lake=spec["lake"], home=spec["home"], environ={})
    run_stage(spec["stage"], settings, **spec["args"])


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
