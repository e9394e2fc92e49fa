"""Memory per task follows one bucket-day, not the day: the same pipeline on S sessions in B buckets
and on 4S sessions in 4B buckets, all in one day, and record it in RESULTS.md (section "scale").

    python -m benchmarks.scale [--sessions 250000] [--buckets 1] [--repeats 2] [--no-record]

Each configuration generates one day of YOOCHOOSE logs (`clickstream generate --days 1`, cached under
benchmarks/data/scale-logs-<sessions>/), then runs `clickstream ingest`, `clickstream sequences` and
`clickstream score` on a new lake made with CLICKSTREAM_BUCKETS set, each command in its own process,
as users run it. The figures of a command are those `os.wait4` reports for its process: user + system
CPU seconds of all its threads, and its peak RSS. Both configurations hold the same sessions per
bucket, so a step that works one bucket-day at a time should peak the same in both (target: the
larger at most 1.25x), and its CPU should grow with the sessions (target: at most 4.4x for 4x the
sessions). A third configuration, 4S sessions in B buckets, shows what the buckets spare (no target).
The model scored is a small champion trained first on a separate lake (20,000 sessions over 4 days, one
epoch on the CPU). The configurations run `--repeats` times, alternated, each on a new
lake: a step keeps its run of least CPU and its highest peak.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).with_name("data")
CLI = (sys.executable, "-m", "clickstream.pipeline.orchestrate.cli")
START = "2014-04-01"
SEED = 1
SCALE = 4  # the larger configuration: SCALE times the sessions in SCALE times the buckets
STEPS = ("ingest", "sequences", "score")
TARGET_RSS, TARGET_CPU = 1.25, 1.1 * SCALE
MODEL = "models:/clickstream-buy-intent@champion"
MODEL_SESSIONS, MODEL_DAYS = 20_000, 4


@dataclass(frozen=True)
class Run:
    """One command's process, as `os.wait4` saw it."""

    user: float  # CPU seconds in user mode, all threads
    system: float  # CPU seconds in the kernel (page faults, mostly)
    rss_gib: float  # peak resident memory
    wall: float
    outcome: str  # the command's last line of output

    @property
    def cpu(self) -> float:
        return self.user + self.system


@dataclass(frozen=True)
class Config:
    """One configuration: its sessions, its buckets, where its logs are."""

    sessions: int
    buckets: int
    logs: Path

    @property
    def per_bucket(self) -> int:
        return self.sessions // self.buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=250_000, help="S: sessions of the smaller day")
    parser.add_argument("--buckets", type=int, default=1, help="B: buckets of the smaller day's lake")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternated")
    parser.add_argument("--no-record", action="store_true", help="Print the figures only.")
    args = parser.parse_args()

    from benchmarks.results import load_average, record

    load_before, began = load_average(), time.perf_counter()
    DATA.mkdir(exist_ok=True)
    small, large = (args.sessions, args.buckets), (SCALE * args.sessions, SCALE * args.buckets)
    unbucketed = (SCALE * args.sessions, args.buckets)  # the larger day in the smaller day's buckets
    configs = [Config(n, b, _logs(n)) for n, b in (small, large, unbucketed)]
    with tempfile.TemporaryDirectory(prefix="scale-", dir=DATA) as folder:
        work = Path(folder)
        env = _environment(work)
        model = _train_champion(work, env)
        runs: dict[tuple[int, str], list[Run]] = {}
        per_bucket: list[int] = []
        for repeat in range(args.repeats):
            for index, config in enumerate(configs):
                lake = work / f"lake-{index}-{repeat}"
                for step, run in _pipeline(config, lake, env).items():
                    runs.setdefault((index, step), []).append(run)
                    print(
                        f"{config.sessions:,} sessions, {config.buckets} bucket(s), {step}: {_figures(run)}", flush=True
                    )
                if index == 1:
                    per_bucket = _sessions_per_bucket(lake)
                shutil.rmtree(lake)
    best = {key: _cheapest(value) for key, value in runs.items()}
    body = _body(args, configs, best, runs, per_bucket, model, load_before, time.perf_counter() - began)
    if args.no_record:
        print(body)
    else:
        record("scale", body)
        print(body)


def _logs(sessions: int) -> Path:
    """One day of YOOCHOOSE logs for `sessions`, generated once (into a scratch name, then renamed,
    so an interrupted run leaves no half-written cache)."""
    logs = DATA / f"scale-logs-{sessions}"
    if not logs.exists():
        scratch = DATA / f"scale-logs-{sessions}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        options = ["--sessions", str(sessions), "--days", "1", "--start-date", START, "--seed", str(SEED)]
        subprocess.run([*CLI, "generate", str(scratch), *options], check=True)
        scratch.rename(logs)
    return logs


def _environment(work: Path) -> dict[str, str]:
    """Every command's environment: its own home and MLflow store, no lake from the caller's shell."""
    env = {key: value for key, value in os.environ.items() if key not in ("CLICKSTREAM_LAKE", "CLICKSTREAM_BUCKETS")}
    return {**env, "CLICKSTREAM_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def _train_champion(work: Path, env: dict[str, str]) -> str:
    """A tiny champion on a separate lake, so the scoring runs the real model path (MLflow load)."""
    logs, lake = work / "model-logs", str(work / "model-lake")
    days = ["--days", str(MODEL_DAYS), "--start-date", START, "--seed", str(SEED)]
    commands = [
        ["generate", str(logs), "--sessions", str(MODEL_SESSIONS), *days],
        _ingest(lake, logs),
        ["sequences", "--lake", lake],
        ["train", "--lake", lake, "--epochs", "1", "--device", "cpu", "--promote"],
    ]
    for command in commands:
        done = subprocess.run([*CLI, *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"clickstream {command[0]} failed:\n{done.stderr}")
    shutil.rmtree(lake)
    return done.stdout.strip().splitlines()[-1].split(";")[0]


def _pipeline(config: Config, lake: Path, env: dict[str, str]) -> dict[str, Run]:
    """ingest -> sequences -> score of one configuration on a new lake of `config.buckets` buckets."""
    env = {**env, "CLICKSTREAM_BUCKETS": str(config.buckets)}
    commands = {
        "ingest": _ingest(str(lake), config.logs),
        "sequences": ["sequences", "--lake", str(lake)],
        "score": ["score", "--lake", str(lake), "--model", MODEL],
    }
    return {
        step: _measure([*CLI, *command], env, lake.with_suffix(f".{step}.log")) for step, command in commands.items()
    }


def _ingest(lake: str, logs: Path) -> list[str]:
    """The `clickstream ingest` arguments of one day of generated logs, clicks with their buys."""
    clicks, buys = logs / "yoochoose-clicks.dat", logs / "yoochoose-buys.dat"
    return ["ingest", "--lake", lake, "--format", "yoochoose", str(clicks), "--buys", str(buys)]


def _measure(command: list[str], env: dict[str, str], log: Path) -> Run:
    """Run `command` as a child and read its own rusage from `os.wait4` (getrusage(RUSAGE_CHILDREN)
    would give the largest peak of every child so far, not this one's)."""
    began = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    lines = log.read_text().strip().splitlines() or ["(no output)"]
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:])} exited {child.returncode}:\n" + "\n".join(lines[-20:]))
    return Run(usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 2**20, wall, lines[-1])


def _sessions_per_bucket(lake: Path) -> list[int]:
    """Sessions in each bucket of the lake's sequences (its Parquet files, read by partition folder)."""
    import polars as pl

    folders = sorted({path.parent.name for path in (lake / "sequences").glob("date=*/bucket=*/*.parquet")})
    files = {name: sorted((lake / "sequences").glob(f"date=*/{name}/*.parquet")) for name in folders}
    return [pl.scan_parquet(paths).select(pl.len()).collect().item() for paths in files.values()]


def _cheapest(runs: list[Run]) -> Run:
    """The run of least CPU, with the highest peak RSS of all runs."""
    best = min(runs, key=lambda run: run.cpu)
    return Run(best.user, best.system, max(run.rss_gib for run in runs), best.wall, best.outcome)


def _figures(run: Run) -> str:
    return f"{run.cpu:.1f} CPU-s ({run.user:.1f} + {run.system:.1f}), {run.rss_gib:.2f} GiB, {run.wall:.1f} s wall"


def _git_commit() -> str:
    """HEAD's short hash, and how many tracked files differ from it (read without taking git's locks)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True).stdout.strip()

    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return git("rev-parse", "--short", "HEAD") + (f" with {len(changed)} tracked file(s) changed" if changed else "")


def _body(
    args: argparse.Namespace,
    configs: list[Config],
    best: dict[tuple[int, str], Run],
    runs: dict[tuple[int, str], list[Run]],
    per_bucket: list[int],
    model: str,
    load_before: float,
    seconds: float,
) -> str:
    from benchmarks.results import load_average

    rows = "\n".join(
        f"| {config.sessions:,} | {config.buckets} | {config.per_bucket:,} | "
        + " | ".join(f"{best[index, step].cpu:.1f} | {best[index, step].rss_gib:.2f}" for step in STEPS)
        + " |"
        for index, config in enumerate(configs)
    )
    missed, ratio_rows = [], []
    for step in STEPS:
        small, large = best[0, step], best[1, step]
        rss, cpu = large.rss_gib / small.rss_gib, large.cpu / small.cpu
        missed += [f"{step} peak RSS"] * (rss > TARGET_RSS) + [f"{step} CPU"] * (cpu > TARGET_CPU)
        ratio_rows.append(
            f"| {step} | {small.rss_gib:.2f} -> {large.rss_gib:.2f} GiB | **{rss:.2f}x** | {_met(rss <= TARGET_RSS)} "
            f"| {small.cpu:.1f} -> {large.cpu:.1f} s | **{cpu:.2f}x** | {_met(cpu <= TARGET_CPU)} |"
        )
    all_runs = "\n".join(
        f"| {config.sessions:,} / {config.buckets} | {step} | "
        + ", ".join(f"{run.cpu:.1f} s / {run.rss_gib:.2f} GiB" for run in runs[index, step])
        + f" | {best[index, step].wall:.1f} s | {best[index, step].outcome.replace('|', '/')} |"
        for index, config in enumerate(configs)
        for step in STEPS
    )
    ratio_table, large = "\n".join(ratio_rows), configs[1]
    verdict = f"; NOT met: {', '.join(missed)}" if missed else ""
    spread = f"{min(per_bucket):,}..{max(per_bucket):,}" if per_bucket else "none found"
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return f"""
`python -m benchmarks.scale --sessions {args.sessions} --buckets {args.buckets} --repeats {args.repeats}`,
commit {_git_commit()}, began {started:%Y-%m-%d %H:%M} UTC and took {seconds / 60:.1f} min. 1-minute load
average {load_before:.1f} at the start, {load_average():.1f} at the end (other work shares the
{os.cpu_count()} cores: CPU seconds are the steadier figure, wall times are not comparable).

One day of YOOCHOOSE logs per configuration (`clickstream generate --days 1 --start-date {START}
--seed {SEED}`; sessions near midnight run into the next day), then `clickstream ingest`, `sequences`
and `score` on a new lake made with CLICKSTREAM_BUCKETS, each its own process (the third row, the
larger day in the smaller day's buckets, shows what the buckets spare; it takes no part in the targets).
CPU = user + system seconds of all its threads, peak = its maximum RSS (`os.wait4` on the child). Each configuration ran
{args.repeats} time(s), alternated with the others, each on a new lake; a step keeps its run of least CPU
and its highest peak. Model: a champion trained for one epoch on the CPU on {MODEL_SESSIONS:,} sessions over
{MODEL_DAYS} days of a separate lake (`{model}`), scored as `--model {MODEL}`.

| sessions | buckets | sessions per bucket | ingest CPU-s | ingest peak GiB | sequences CPU-s \
| sequences peak GiB | score CPU-s | score peak GiB |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

{SCALE}x the sessions in {SCALE}x the buckets (the same sessions per bucket); targets: peak RSS at most
{TARGET_RSS}x, CPU at most {TARGET_CPU:g}x:

| step | peak RSS | ratio | target {TARGET_RSS}x | CPU | ratio | target {TARGET_CPU:g}x |
|---|---|---:|---|---|---:|---|
{ratio_table}

**{2 * len(STEPS) - len(missed)} of {2 * len(STEPS)} targets met{verdict}.** Sessions per bucket in the
last {large.sessions:,}-session lake's sequences: {spread}.

| sessions / buckets | step | every run (CPU, peak) | wall | last line of output |
|---|---|---|---|---|
{all_runs}
"""


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main()
