"""Read commands, each timed in a fresh process, beside MLflow's own client on the same store.

`clickstream scores --top 10`, `clickstream models`, `clickstream session <missing id>`,
`clickstream promote` and `clickstream rollback`, as analysts and operators run them.

    python -m benchmarks.reads [--sessions 20000] [--days 4] [--repeats 5] [--quick]

Builds once, under benchmarks/data/reads-<sessions>-<days>/, a lake and MLflow store as a user does:
`generate`, `ingest`, `sequences`, `train --epochs 1 --promote` (v1, champion), `train --epochs 2`
(v2, challenger), `score`, all on the CPU. Then, --repeats rounds, each running every command once in
turn (so a change of load hits them all alike): the commands above (promote makes v2 champion by hand,
rollback brings v1 back) and three peers in plain Python:
- a bare `MlflowClient(uri).search_model_versions(...)`, import included, a plain script: it exits
  through the interpreter's shutdown collections, which the CLI spares itself with gc.freeze;
- the same followed by the import of the model's code (models.bundle: torch, scipy), exiting as the
  CLI does: the least a command that loads a model (promote and rollback check that it loads) can cost;
- MLflow's own way to check that a version loads and point an alias at it (`mlflow.pyfunc.load_model`,
  then `set_registered_model_alias`, which re-points `champion` at the version it already names).
Each process is timed from its start to its exit (wall) and by its own user + system CPU seconds
(`os.wait4`); the figures are medians.

Targets: `scores` under 1.5 s wall; `models`, `promote` and `rollback` at most 1.2x the bare client's
wall time (the ratio table holds the CPU-seconds ratios, peer over ours, against 1/1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).with_name("data")
CLI = str(Path(sys.executable).with_name("clickstream"))
MODEL = "clickstream-buy-intent"
SCORES_TARGET_S = 1.5  # wall seconds of `clickstream scores`
REGISTRY_TARGET = 1.2  # wall of models / promote / rollback over the bare client's
BARE_SEARCH = """\
import sys
from mlflow import MlflowClient

MlflowClient(sys.argv[1], sys.argv[1]).search_model_versions(f"name='{sys.argv[2]}'")
"""
# the least a command that loads a model pays: the bare search, then the model's code (torch, scipy),
# exiting as the CLI does (its heap frozen: no shutdown collections over MLflow's and torch's objects)
BARE_SEARCH_AND_MODEL_CODE = BARE_SEARCH + "import gc\nimport clickstream.models.bundle\n\ngc.freeze()\n"
MLFLOW_PROMOTE = """\
import sys
import mlflow
from mlflow import MlflowClient

uri, name, version, champion = sys.argv[1:]
mlflow.set_tracking_uri(uri)
mlflow.pyfunc.load_model(f"models:/{name}/{version}")
MlflowClient(uri, uri).set_registered_model_alias(name, "champion", champion)
"""
MISSING_SESSION = "no-such-session"


@dataclass(frozen=True)
class Run:
    """One process, as `os.wait4` saw it."""

    wall: float
    cpu: float  # user + system seconds, all threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every command, alternated")
    parser.add_argument("--quick", action="store_true", help="3 rounds (RESULTS-quick.md)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3

    from benchmarks.results import load_average

    folder = DATA / f"reads-{args.sessions}-{args.days}"
    env = _environment(folder)
    _build(folder, env, args.sessions, args.days)
    _reset_champion(env)
    commands = _commands(folder, env)
    load_before, runs = load_average(), {name: [] for name in commands}
    for round_ in range(args.repeats):
        for name, command in commands.items():
            runs[name].append(_measure(command, env, name))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {r[-1].wall:.2f} s" for n, r in runs.items()), flush=True)
    _report(args, runs, load_before)


def _environment(folder: Path) -> dict[str, str]:
    """Every process's environment: the benchmark's own home, lake and MLflow store."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CLICKSTREAM_", "MLFLOW_"))}
    return {**env, "CLICKSTREAM_HOME": str(folder / "home"), "CLICKSTREAM_LAKE": str(folder / "lake")}


def _build(folder: Path, env: dict[str, str], sessions: int, days: int) -> None:
    """The lake and store, built once in place (the store records its artifacts' absolute paths, so it
    cannot be built elsewhere and moved); a folder without its `built` mark is built again."""
    if (folder / "built").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    logs = folder / "logs"
    clicks, buys = str(logs / "yoochoose-clicks.dat"), str(logs / "yoochoose-buys.dat")
    steps = [
        ["generate", str(logs), "--sessions", str(sessions), "--days", str(days)],
        ["ingest", "--format", "yoochoose", clicks, "--buys", buys],
        ["sequences"],
        ["train", "--epochs", "1", "--device", "cpu", "--promote"],
        ["train", "--epochs", "2", "--device", "cpu"],
        ["score"],
    ]
    for step in steps:
        done = subprocess.run([CLI, *step], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"clickstream {step[0]} failed:\n{done.stderr[-2000:]}")
        print(done.stdout.strip().splitlines()[-1], flush=True)
    (folder / "built").write_text("")


def _reset_champion(env: dict[str, str]) -> None:
    """v1 champion again, where an interrupted run left v2 (each round ends with v1)."""
    listed = subprocess.run([CLI, "models", "--format", "json"], env=env, capture_output=True, text=True, check=True)
    if (json.loads(listed.stdout)["champion"] or {}).get("version") != "1":
        subprocess.run([CLI, "promote", "1", "--reason", "benchmark start"], env=env, check=True, capture_output=True)


def _commands(folder: Path, env: dict[str, str]) -> dict[str, list[str]]:
    uri = f"sqlite:///{folder / 'home' / 'mlflow.db'}"
    return {
        "scores": [CLI, "scores", "--top", "10"],
        "session (missing)": [CLI, "session", MISSING_SESSION],
        "models": [CLI, "models"],
        "bare client search": [sys.executable, "-c", BARE_SEARCH, uri, MODEL],
        "bare search + model code": [sys.executable, "-c", BARE_SEARCH_AND_MODEL_CODE, uri, MODEL],
        "promote": [CLI, "promote", "2", "--reason", "benchmark"],
        "rollback": [CLI, "rollback", "--reason", "benchmark"],
        "MLflow load + alias": [sys.executable, "-c", MLFLOW_PROMOTE, uri, MODEL, "2", "1"],
    }


def _measure(command: list[str], env: dict[str, str], name: str) -> Run:
    """Run `command` to its exit and read its own rusage; SystemExit when it failed (the missing
    session must fail, in one line)."""
    began = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    error = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    expected = 2 if command[-1] == MISSING_SESSION else 0
    if child.returncode != expected:
        raise SystemExit(f"{name} exited {child.returncode}:\n{error[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime)


def _median(runs: list[Run]) -> Run:
    return Run(statistics.median(run.wall for run in runs), statistics.median(run.cpu for run in runs))


def _report(args: argparse.Namespace, runs: dict[str, list[Run]], load_before: float) -> None:
    from benchmarks.results import Ratio, load_average, record

    median = {name: _median(found) for name, found in runs.items()}
    bare = median["bare client search"]
    rows = "\n".join(
        f"| {name} | {run.wall:.2f} | {min(r.wall for r in runs[name]):.2f} | {run.cpu:.2f} "
        f"| {run.wall / bare.wall:.2f}x | {run.cpu / bare.cpu:.2f}x | {_target(name, run, bare)} |"
        for name, run in median.items()
    )
    ratios = [
        Ratio(
            f"`clickstream {name}`",
            "bare MlflowClient search, fresh process",
            f"{median[name].cpu:.2f} CPU-s",
            f"{bare.cpu:.2f} CPU-s",
            bare.cpu / median[name].cpu,
            round(1 / REGISTRY_TARGET, 2),
        )
        for name in ("models", "promote", "rollback")
    ]
    same_question = median["MLflow load + alias"]
    ratios += [
        Ratio(
            f"`clickstream {name}`",
            "MLflow pyfunc.load_model + set alias, fresh process",
            f"{median[name].cpu:.2f} CPU-s",
            f"{same_question.cpu:.2f} CPU-s",
            same_question.cpu / median[name].cpu,
        )
        for name in ("promote", "rollback")
    ]
    body = f"""
`python -m benchmarks.reads --sessions {args.sessions} --days {args.days} --repeats {args.repeats}`: medians of
{args.repeats} rounds, each running every command once in turn, each command a fresh process; 1-minute load
average {load_before:.1f} at the start, {load_average():.1f} at the end ({os.cpu_count()} cores shared with
other work: wall times stretch with the load, CPU seconds much less). The lake: {args.sessions:,} generated
sessions over {args.days} days; v1 (champion) trained for one epoch, v2 for two, on the CPU.

| process | wall s | fastest wall s | CPU s | wall / bare client | CPU / bare client | target |
|---|---:|---:|---:|---:|---:|---|
{rows}

{_floor_sentence(median)}
"""
    record("reads", body, ratios, quick=args.quick)
    print(body)


def _floor_sentence(median: dict[str, Run]) -> str:
    """What promote and rollback take beside the least a command that loads a model can take."""
    bare, floor = median["bare client search"], median["bare search + model code"]
    shares = "; ".join(
        f"{name} {median[name].wall / floor.wall:.2f}x its wall and {median[name].cpu / floor.cpu:.2f}x its CPU"
        for name in ("promote", "rollback")
    )
    return (
        "`promote` and `rollback` check that the version loads, which takes torch: the bare search followed by "
        f"the import of the model's code alone takes {floor.wall:.2f} s wall, {floor.cpu:.2f} CPU-s "
        f"({floor.wall / bare.wall:.2f}x and {floor.cpu / bare.cpu:.2f}x the bare search); of that floor they "
        f"take {shares}."
    )


def _target(name: str, run: Run, bare: Run) -> str:
    """The command's target and whether this run met it ("" where it has none)."""
    if name == "scores":
        return f"< {SCORES_TARGET_S} s: {'met' if run.wall < SCORES_TARGET_S else 'NOT met'}"
    if name in ("models", "promote", "rollback"):
        ok = run.wall <= REGISTRY_TARGET * bare.wall
        return f"<= {REGISTRY_TARGET}x: {'met' if ok else 'NOT met'}"
    return ""


if __name__ == "__main__":
    main()
