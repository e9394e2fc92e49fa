"""GPU figures of the training and scoring paths, in one run, against their targets:

- one full epoch of the project's `fit` (forward + backward + step, default model and batch size)
  over 9.25M YOOCHOOSE-shaped sessions, with peak GPU memory and nvidia-smi utilisation during it;
- the naive loop (per-sample Dataset + collate + pad + pack_padded_sequence) on the same device;
- the same `fit` on this machine's CPU cores (a subset, per session);
- float32 vs TF32 vs bf16 autocast: validation AUC after the same steps from the same start;
- scoring (`predict`) throughput including the host-to-device copy.

    python -m benchmarks.gpu [--device cuda] [--sessions 9250000] [--out gpu_results.json]

Run through benchmarks/gpu.sh on a GPU machine. Every part is timed and recorded on its own: one
that fails is reported with its error and the rest still run. Imports no polars, MLflow,
LightGBM or Airflow.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.results import machine
from benchmarks.train_throughput import naive_throughput
from clickstream.features.tensors import SequenceTensors
from clickstream.models.device import resolve_device
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict
from clickstream.models.training.fit import EpochStats, fit
from clickstream.models.training.inputs import TrainingInput
from clickstream.pipeline.core.config import ModelConfig, TrainConfig
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, N_ITEMS, synthetic_tensors

TARGETS = {
    "epoch_seconds": 2.5,  # at most, one epoch over 9.25M sessions
    "vs_naive": 10.0,  # at least
    "vs_cpu": 100.0,  # at least, against the machine's CPU cores
    "bf16_auc_gap": 0.002,  # at most
    "scoring_sessions_per_s": 5_000_000,  # at least
}


def _model() -> BuyIntentLSTM:
    torch.manual_seed(0)
    return BuyIntentLSTM(ModelConfig(), N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Utilisation:
    """nvidia-smi's GPU utilisation sampled every 200 ms while the block runs (none without it)."""

    def __enter__(self) -> Utilisation:
        self.samples: list[int] = []
        command = shutil.which("nvidia-smi")
        self._proc = (
            subprocess.Popen(
                [command, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                text=True,
            )
            if command
            else None
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.samples = [int(line.split(",")[0]) for line in out.split() if line.strip().isdigit()]

    def summary(self) -> dict[str, float | int | None]:
        values = np.array(self.samples or [np.nan], dtype=float)
        return {
            "samples": len(self.samples),
            "mean": float(np.nanmean(values)) if self.samples else None,
            "median": float(np.nanmedian(values)) if self.samples else None,
        }


STREAM_BUFFER = 65_536  # sessions per streamed buffer: one shard unit of the lake


def epochs_of_fit(train, val, device: torch.device, config: TrainConfig) -> list[EpochStats]:
    """The EpochStats of `fit` (its training-pass timing) of the default model, no checkpoints."""
    return fit(train, val, _model(), replace(config, device=str(device), patience=config.epochs + 1)).history


def training(args: argparse.Namespace, device: torch.device) -> dict:
    """Two epochs of `fit` over the full set: the first warms up (allocator, cuDNN plans), the second is timed."""
    train, val = synthetic_tensors(args.sessions, seed=1), synthetic_tensors(args.val_sessions, seed=2)
    config = replace(TrainConfig(), epochs=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation() as utilisation:
        history = epochs_of_fit(train, val, device, config)
    result = {
        "sessions": args.sessions,
        "events": int(train.item.numel()),
        "batch_size": config.batch_size,
        "epoch_seconds": [s.seconds for s in history],
        "sessions_per_s": history[-1].sessions_per_s,
        "val_auc": [s.val_auc for s in history],
        "utilisation_percent": utilisation.summary(),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def streamed(args: argparse.Namespace, device: torch.device) -> dict:
    """`training`'s two epochs with the training set streamed: buffers of STREAM_BUFFER sessions cut
    from host tensors in a seeded order, each moved to the device as a lake buffer is (second epoch timed)."""
    train, val = synthetic_tensors(args.sessions, seed=1), synthetic_tensors(args.val_sessions, seed=2)
    starts = list(range(0, train.n_sessions, STREAM_BUFFER))

    def buffers(seed: int | None) -> Iterator[SequenceTensors]:
        order = list(range(len(starts)))
        if seed is not None:
            order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed)).tolist()
        for index in order:
            yield train.select(torch.arange(starts[index], min(starts[index] + STREAM_BUFFER, train.n_sessions)))

    data = TrainingInput.streamed(train.n_sessions, int(train.item.numel()), buffers, device)
    history = epochs_of_fit(data, val, device, replace(TrainConfig(), epochs=2))
    return {
        "sessions": args.sessions,
        "buffer_sessions": STREAM_BUFFER,
        "epoch_seconds": [s.seconds for s in history],
        "sessions_per_s": history[-1].sessions_per_s,
        "val_auc": [s.val_auc for s in history],
    }


def naive(args: argparse.Namespace, device: torch.device) -> dict:
    n = args.naive_sessions
    return {"sessions": n, "sessions_per_s": naive_throughput(synthetic_tensors(n, seed=3), device, 4096)[0]}


def cpu(args: argparse.Namespace, device: torch.device) -> dict:
    """The same `fit` on the CPU cores, on a subset (its second epoch timed, per session)."""
    n = args.cpu_sessions
    history = epochs_of_fit(
        synthetic_tensors(n, seed=1),
        synthetic_tensors(n // 10, seed=2),
        torch.device("cpu"),
        replace(TrainConfig(), epochs=2),
    )
    return {"sessions": n, "threads": torch.get_num_threads(), "sessions_per_s": history[-1].sessions_per_s}


def precision(args: argparse.Namespace, device: torch.device) -> dict:
    """Validation AUC and throughput after the same epochs from the same start, per precision."""
    train = synthetic_tensors(args.precision_sessions, seed=4)
    val = synthetic_tensors(max(args.precision_sessions // 5, 2000), seed=5)
    config = replace(TrainConfig(), epochs=3)
    variants = {
        "float32": {},
        "tf32": {"tf32": True},
        "bf16": {"bf16": True},
        "bf16+tf32": {"bf16": True, "tf32": True},
    }
    out = {}
    for name, changes in variants.items():
        history = epochs_of_fit(train, val, device, replace(config, **changes))
        out[name] = {"val_auc": history[-1].val_auc, "sessions_per_s": history[-1].sessions_per_s}
    out["bf16_auc_gap"] = abs(out["bf16"]["val_auc"] - out["float32"]["val_auc"])
    out["sessions"], out["epochs"] = args.precision_sessions, config.epochs
    return out


def scoring(args: argparse.Namespace, device: torch.device) -> dict:
    """predict() from CPU tensors (pinned copy to the device included), best of two runs per batch size."""
    tensors, model = synthetic_tensors(args.sessions, seed=6), _model().eval()
    out = {"sessions": args.sessions}
    for batch_size in (16384, 65536):
        best = float("inf")
        for _ in range(2):
            _sync(device)
            start = time.perf_counter()
            predict(model, tensors, batch_size=batch_size, device=device)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        out[f"batch_{batch_size}"] = {"seconds": best, "sessions_per_s": args.sessions / best}
    out["sessions_per_s"] = max(v["sessions_per_s"] for k, v in out.items() if k.startswith("batch_"))
    return out


PARTS: dict[str, Callable[[argparse.Namespace, torch.device], dict]] = {
    "training": training,
    "streamed": streamed,
    "naive": naive,
    "cpu": cpu,
    "precision": precision,
    "scoring": scoring,
}


def markdown(results: dict) -> str:
    """The RESULTS.md section body of `results`, with each figure against its target."""
    t, n, c, p, s = (results.get(k, {}) for k in ("training", "naive", "cpu", "precision", "scoring"))

    def fig(value: object, spec: str = ",.0f") -> str:
        return format(value, spec) if isinstance(value, int | float) else "n/a"

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    epoch = t.get("epoch_seconds", [None])[-1]
    rate = t.get("sessions_per_s")
    vs_naive = rate / n["sessions_per_s"] if rate and n.get("sessions_per_s") else None
    vs_cpu = rate / c["sessions_per_s"] if rate and c.get("sessions_per_s") else None
    gap, score = p.get("bf16_auc_gap"), s.get("sessions_per_s")
    rows = [
        (
            "epoch over {} sessions (fit, 2nd epoch)".format(fig(t.get("sessions"))),
            f"{fig(epoch, '.2f')} s",
            "<= 2.5 s",
            met(None if epoch is None else epoch <= TARGETS["epoch_seconds"]),
        ),
        ("training throughput", f"{fig(rate)} sessions/s", "", ""),
        (
            "vs naive loop ({} sessions/s)".format(fig(n.get("sessions_per_s"))),
            f"{fig(vs_naive, '.1f')}x",
            ">= 10x",
            met(None if vs_naive is None else vs_naive >= TARGETS["vs_naive"]),
        ),
        (
            "vs the same fit on {} CPU threads ({} sessions/s)".format(
                c.get("threads", "?"), fig(c.get("sessions_per_s"))
            ),
            f"{fig(vs_cpu, '.0f')}x",
            ">= 100x",
            met(None if vs_cpu is None else vs_cpu >= TARGETS["vs_cpu"]),
        ),
        (
            "bf16 vs float32 val AUC gap",
            fig(gap, ".4f"),
            "<= 0.002",
            met(None if gap is None else gap <= TARGETS["bf16_auc_gap"]),
        ),
        (
            "scoring incl. host-to-device copy",
            f"{fig(score)} sessions/s",
            ">= 5M/s",
            met(None if score is None else score >= TARGETS["scoring_sessions_per_s"]),
        ),
        ("peak GPU memory (training)", f"{fig(t.get('peak_memory_gib'), '.2f')} GiB", "", ""),
        (
            "GPU utilisation during training (nvidia-smi, median)",
            f"{fig((t.get('utilisation_percent') or {}).get('median'), '.0f')} %",
            "",
            "",
        ),
    ]
    table = "\n".join(f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows)
    precisions = "\n".join(
        f"| {name} | {v['val_auc']:.4f} | {v['sessions_per_s']:,.0f} |" for name, v in p.items() if isinstance(v, dict)
    )
    errors = "\n".join(
        f"- {name} failed: {results[name]['error']}" for name in PARTS if "error" in results.get(name, {})
    )
    checks = results.get("checks")
    return f"""`bash benchmarks/gpu.sh` on {results["machine"]}, torch {results["torch"]}, default ModelConfig and
TrainConfig (batch size {t.get("batch_size", "n/a")}), synthetic YOOCHOOSE-shaped sessions.
GPU checks: {", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in checks.items()) if checks else "not run"}.

| figure | value | target | |
|---|---:|---|---|
{table}

Precision, {p.get("epochs", "?")} epochs of fit on {fig(p.get("sessions"))} sessions from the same start:

| precision | val AUC | sessions/s |
|---|---:|---:|
{precisions}
{errors}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sessions", type=int, default=9_250_000, help="training and scoring set")
    parser.add_argument("--val-sessions", type=int, help="[sessions / 50]")
    parser.add_argument("--naive-sessions", type=int, help="[sessions / 50]")
    parser.add_argument("--cpu-sessions", type=int, help="[sessions / 50]")
    parser.add_argument("--precision-sessions", type=int, help="[sessions / 10]")
    parser.add_argument("--checks", type=Path, help="JSON written by gpu_checks, reported with the figures")
    parser.add_argument("--out", type=Path, default=Path("gpu_results.json"))
    args = parser.parse_args(argv)
    for name, share in (("val_sessions", 50), ("naive_sessions", 50), ("cpu_sessions", 50), ("precision_sessions", 10)):
        if getattr(args, name) is None:
            setattr(args, name, max(args.sessions // share, 2000))
    device = resolve_device(args.device)
    results: dict = {"machine": machine(), "torch": torch.__version__, "device": str(device)}
    results["clickstream"] = str(Path(fit.__code__.co_filename).parents[1])  # which checkout ran
    if args.checks is not None and args.checks.exists():
        results["checks"] = json.loads(args.checks.read_text())
    for name, part in PARTS.items():
        start = time.perf_counter()
        try:
            results[name] = part(args, device)
        except Exception as error:  # record it and measure the rest
            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["wall_s"] = time.perf_counter() - start
        print(f"{name}: {results[name]}", flush=True)
        args.out.write_text(json.dumps(results, indent=2))  # what is done survives a timeout
    print(markdown(results))
    return 0 if all("error" not in results[name] for name in PARTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
