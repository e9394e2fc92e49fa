"""Training memory and speed as the window grows: `clickstream train --epochs 3 --device cpu` on a
window and on one 4x larger, streamed under a 64 MiB data budget, with glibc's allocator and (where
the library is installed) jemalloc's; and the larger window resident against it streamed in buffers
of `TrainConfig.shuffle_buffer` sessions (a 256 MiB budget).

    python -m benchmarks.train_memory [--sessions 300000] [--no-record]

Each run is its own process on a fresh MLflow store (peak RSS and CPU time are the process's own,
from wait4); the lakes hold synthetic sequences over ten days (the last two
validate). Targets: the 4x window's peak within 1.25x of the smaller one's, streamed; streamed
training sessions per CPU-second no lower than resident on the same window, at the default buffer.
glibc keeps much of what the streamed buffers free, in pieces too small to hand back, so its figure
also shows what the training image's allocator (jemalloc, docker/Dockerfile.gpu-worker) saves.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).with_name("data")
SCALE = 4
BUDGET_MB = 64  # below both windows' resident size, so both stream
SPEED_BUDGET_MB = 256  # the larger window streams in buffers of TrainConfig.shuffle_buffer sessions
DAYS = 10
ITEMS = 20_000
EPOCHS = 3  # the streamed path makes its buffers anew each epoch: what an allocator keeps shows over several


@dataclass(frozen=True)
class Run:
    label: str
    sessions: int
    train_sessions: int
    peak_gib: float
    cpu_s: float
    wall_s: float
    epoch_sessions_per_s: float
    buffer: int  # sessions a streamed buffer holds; 0: resident

    @property
    def sessions_per_cpu_s(self) -> float:
        return self.train_sessions / self.cpu_s


def _lake(path: Path, sessions: int) -> str:
    """A lake of `sessions` synthetic labelled sessions over DAYS days (made once, kept under data/)."""
    if not (path / "sequences" / "_delta_log").exists():
        from clickstream.pipeline.core.lake import Lake
        from clickstream.pipeline.synthetic.sequences import synthetic_sequences, write_sequences

        write_sequences(Lake(str(path)), synthetic_sequences(sessions=sessions, days=DAYS, seed=3, n_items=ITEMS))
    return str(path)


def _train(label: str, lake: str, sessions: int, work: Path, budget_mb: int | None, preload: str | None) -> Run:
    """One `clickstream train --epochs EPOCHS --device cpu` in its own process and MLflow store, with
    the C allocator `preload` (LD_PRELOAD) in place of glibc's when given."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    env = {**os.environ, "CLICKSTREAM_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    env.pop("CLICKSTREAM_TRAIN_MEMORY_MB", None)
    env.pop("LD_PRELOAD", None)
    if preload is not None:
        env["LD_PRELOAD"] = preload
    if budget_mb is not None:
        env["CLICKSTREAM_TRAIN_MEMORY_MB"] = str(budget_mb)
    command = [sys.executable, "-c", "from clickstream.pipeline.orchestrate.cli import main; main()", "train"]
    command += ["--epochs", str(EPOCHS), "--device", "cpu", "--lake", lake]
    log = work / f"{home.name}.log"
    began = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label}: train failed: {log.read_text()[-2000:]}")
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    return Run(
        label=label,
        sessions=sessions,
        train_sessions=int(run.data.params["train_sessions"]),
        peak_gib=usage.ru_maxrss / 2**20,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall,
        epoch_sessions_per_s=run.data.metrics["epoch_sessions_per_s"],
        buffer=_buffer(label, run.data.params, budget_mb),
    )


def _buffer(label: str, params: dict[str, str], budget_mb: int | None) -> int:
    """Sessions a buffer of the run held (0: resident); refuses a figure whose label says streamed
    when the training set fitted the budget, or the reverse."""
    from clickstream.models.training.inputs import buffer_sessions, resident_bytes

    sessions, events, budget = int(params["train_sessions"]), int(params["train_events"]), (budget_mb or 1 << 20) << 20
    fits = resident_bytes(sessions, events) <= budget
    if fits == ("streamed" in label):
        raise SystemExit(f"{label}: the training set was {'resident' if fits else 'streamed'}; change the budget")
    return 0 if fits else buffer_sessions(budget, sessions, events, int(params["train_shuffle_buffer"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300_000, help="sessions of the smaller window")
    parser.add_argument("--no-record", action="store_true", help="Print the figures only.")
    args = parser.parse_args()

    from benchmarks.results import load_average, machine, record

    load = load_average()
    DATA.mkdir(exist_ok=True)
    small, large = args.sessions, SCALE * args.sessions
    lakes = {n: _lake(DATA / f"train-memory-{n}", n) for n in (small, large)}
    jemalloc = ctypes.util.find_library("jemalloc")
    allocators = {"glibc": None, **({"jemalloc": jemalloc} if jemalloc else {})}
    with tempfile.TemporaryDirectory(prefix="train-memory-", dir=DATA) as folder:
        work = Path(folder)
        memory = [
            _train(f"{n:,} sessions, streamed ({BUDGET_MB} MiB), {name}", lakes[n], n, work, BUDGET_MB, preload)
            for name, preload in allocators.items()
            for n in (small, large)
        ]
        resident = _train(f"{large:,} sessions, resident, glibc", lakes[large], large, work, None, None)
        label = f"{large:,} sessions, streamed ({SPEED_BUDGET_MB} MiB), glibc"
        streamed = _train(label, lakes[large], large, work, SPEED_BUDGET_MB, None)
    runs = [*memory, resident, streamed]
    growth = {name: memory[2 * i + 1].peak_gib / memory[2 * i].peak_gib for i, name in enumerate(allocators)}
    speed = streamed.sessions_per_cpu_s / resident.sessions_per_cpu_s
    lines = [
        f"Machine: {machine()}; 1-minute load {load:.1f} at the start.",
        f"`clickstream train --epochs {EPOCHS} --device cpu`, default model, synthetic sequences over {DAYS} days",
        f"({ITEMS:,} items), each run its own process and store.",
        "",
        "| run | training sessions | sessions a buffer | peak RSS | CPU-s | wall s | sessions / CPU-s "
        "(whole command) | epoch sessions/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.label} | {r.train_sessions:,} | {r.buffer or 'all'} | {r.peak_gib:.2f} GiB | {r.cpu_s:.1f} | "
            f"{r.wall_s:.1f} | {r.sessions_per_cpu_s:,.0f} | {r.epoch_sessions_per_s:,.0f} |"
            for r in runs
        ),
        "",
        *(
            f"**Peak RSS, {SCALE}x the window, streamed, {name}: {ratio:.2f}x (target <= 1.25x: "
            f"{'met' if ratio <= 1.25 else 'NOT met'}).**"
            for name, ratio in growth.items()
        ),
        f"**Streamed ({SPEED_BUDGET_MB} MiB) vs resident sessions per CPU-second on the {large:,} window: {speed:.2f}x "
        f"(target >= 1x: {'met' if speed >= 1 else 'NOT met'}).**",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        record("train_memory", body)


if __name__ == "__main__":
    main()
