"""Data-parallel training across processes: the same `fit` under DistributedDataParallel.

    python -m torch.distributed.run --standalone --nproc_per_node N \
        -m clickstream.models.training.distributed JOB.pt OUT_DIR

JOB.pt (written by `write_job`) holds the train/validation tensors, the configs and the
model's initial weights; every rank loads it, joins the process group (nccl on CUDA, one
GPU per rank; gloo on CPU), trains on its strided shard of each epoch's batches, and rank 0
writes checkpoints, one line per finished epoch to OUT_DIR/epochs.jsonl and OUT_DIR/result.pt.
`fit_distributed` does all of that from Python and hands back a FitResult like `fit`'s;
`fit_ranks` is what training calls: `fit` in this process for one rank, else `fit_distributed`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.distributed as dist

from clickstream.features.tensors import SequenceTensors
from clickstream.models.device import resolve_device
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.torch_files import save_torch
from clickstream.models.training.fit import EpochStats, FitResult, fit
from clickstream.pipeline.core.config import ModelConfig, TrainConfig
from clickstream.pipeline.core.errors import ClickstreamError, TrainingError

RESULT = "result.pt"
ERROR = "error.txt"
EPOCHS = "epochs.jsonl"  # rank 0 appends one EpochStats per finished epoch
POLL_S = 2.0  # how often the launcher relays finished epochs while the ranks train


def _flat(tensors: SequenceTensors) -> dict:
    return {f.name: getattr(tensors, f.name) for f in fields(tensors)}


def write_job(
    path: Path,
    train: SequenceTensors,
    val: SequenceTensors,
    model: BuyIntentLSTM,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> None:
    """Save everything a rank needs to run `fit` (tensors, configs, initial weights) to `path`."""
    job = {
        "train": _flat(train),
        "val": _flat(val),
        "model_config": asdict(model.config),
        "model_sizes": [
            model.item.num_embeddings,
            model.category.num_embeddings,
            model.event_type.num_embeddings,
            model.n_continuous,
        ],
        "initial_weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": asdict(config),
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
        "resume": resume,
    }
    save_torch(job, path)


def load_job(path: Path) -> dict:
    """The job `write_job` saved (tensors on CPU)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def train_rank(job: dict, on_epoch: Callable[[EpochStats], None] | None = None) -> FitResult:
    """Run this rank's part of the job; the process group must already be initialised."""
    model = BuyIntentLSTM(ModelConfig(**job["model_config"]), *job["model_sizes"])
    model.load_state_dict(job["initial_weights"])
    return fit(
        SequenceTensors(**job["train"]),
        SequenceTensors(**job["val"]),
        model,
        TrainConfig(**job["train_config"]),
        checkpoint_dir=job["checkpoint_dir"],  # a path or fsspec URL, as given
        resume=job["resume"],
        on_epoch=on_epoch,
    )


def _append_epoch(path: Path) -> Callable[[EpochStats], None]:
    def append(stats: EpochStats) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(asdict(stats)) + "\n")

    return append


def main(argv: list[str] | None = None) -> None:
    """Entry point for each torchrun rank: join the group, train, rank 0 writes the result."""
    parser = argparse.ArgumentParser(description="One rank of a DDP training job (run under torchrun).")
    parser.add_argument("job", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)

    job = load_job(args.job)
    use_cuda = resolve_device(job["train_config"]["device"]).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    try:
        result = train_rank(job, on_epoch=_append_epoch(args.out / EPOCHS) if rank == 0 else None)
    except ClickstreamError as error:
        if rank == 0:
            (args.out / ERROR).write_text(str(error))
        raise
    finally:
        dist.destroy_process_group()
    if rank == 0:
        state = {
            "model": result.model.state_dict(),
            "history": [asdict(s) for s in result.history],
            "best_epoch": result.best_epoch,
            "best_val_auc": result.best_val_auc,
            "device": result.device,
            "resumed_epochs": result.resumed_epochs,
        }
        temp = args.out / f".{RESULT}.tmp"
        save_torch(state, temp)
        os.replace(temp, args.out / RESULT)


def check_ranks(ranks: int, device: str) -> None:
    """TrainingError (one line) unless `ranks` processes can train on `device`: one GPU each on
    CUDA (`auto` included: asking for ranks asks for GPUs), any number of gloo ranks on `cpu`."""
    if ranks < 1:
        raise TrainingError(f"--gpus must be at least 1, not {ranks}")
    if device == "cpu":
        return
    seen = torch.cuda.device_count()
    if seen < ranks:
        raise TrainingError(
            f"--gpus {ranks} asked for {ranks} GPUs but torch sees {seen}; use --gpus {max(seen, 1)}, "
            "or --device cpu for CPU ranks"
        )


def fit_distributed(
    train: SequenceTensors,
    val: SequenceTensors,
    model: BuyIntentLSTM,
    config: TrainConfig,
    *,
    nproc: int,
    workdir: Path,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """`fit` on `nproc` processes (one per GPU on CUDA, gloo on CPU) through torchrun.

    `model` supplies the initial weights and receives the best ones; it comes back on CPU in
    eval mode, as from `fit`. The per-rank batch size is `config.batch_size`. `on_epoch` runs
    here, in the launching process, for every epoch rank 0 finishes (relayed while the ranks
    train, so a killed run has logged the epochs its checkpoint holds). Raises TrainingError
    with the rank's message when training fails (e.g. NaN loss).
    """
    check_ranks(nproc, config.device)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, ERROR, EPOCHS):
        (workdir / stale).unlink(missing_ok=True)
    job = workdir / "job.pt"
    write_job(job, train, val, model, config, checkpoint_dir=checkpoint_dir, resume=resume)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    relayed = 0

    def relay() -> None:
        nonlocal relayed
        path = workdir / EPOCHS
        complete = (path.read_text() if path.exists() else "").split("\n")[:-1]  # the last may be partial
        for line in complete[relayed:]:
            if on_epoch is not None:
                on_epoch(EpochStats(**json.loads(line)))
        relayed = len(complete)

    with subprocess.Popen([*command, "-m", "clickstream.models.training.distributed", str(job), str(workdir)]) as ranks:
        while True:
            try:
                ranks.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                relay()
            except BaseException:  # KeyboardInterrupt, task timeout: stop the ranks with us
                ranks.terminate()
                ranks.wait()
                raise
    relay()
    if (workdir / ERROR).exists():
        raise TrainingError((workdir / ERROR).read_text())
    if ranks.returncode != 0 or not (workdir / RESULT).exists():
        raise TrainingError(f"distributed training exited with code {ranks.returncode}; see the ranks' log above")
    state = torch.load(workdir / RESULT, weights_only=True)
    model.to("cpu").load_state_dict(state["model"])
    history = [EpochStats(**s) for s in state["history"]]
    return FitResult(
        model.eval(), history, state["best_epoch"], state["best_val_auc"], state["device"], state["resumed_epochs"]
    )


def fit_ranks(
    train: SequenceTensors,
    val: SequenceTensors,
    model: BuyIntentLSTM,
    config: TrainConfig,
    *,
    ranks: int = 1,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """`fit` in this process for one rank; `fit_distributed` on `ranks` processes otherwise (the
    job travels through a temporary folder). The same checkpoints, resume and on_epoch either way."""
    if ranks == 1:
        return fit(train, val, model, config, checkpoint_dir=checkpoint_dir, resume=resume, on_epoch=on_epoch)
    with tempfile.TemporaryDirectory(prefix="clickstream-ranks-") as workdir:
        return fit_distributed(
            train,
            val,
            model,
            config,
            nproc=ranks,
            workdir=Path(workdir),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            on_epoch=on_epoch,
        )


if __name__ == "__main__":
    main()
