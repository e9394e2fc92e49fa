"""Training across processes and machines: torchrun starts the ranks, each runs its share of a Job.

    python -m torch.distributed.run --nproc-per-node G [--standalone | --nnodes N --node-rank R
        --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id clickstream-train]
        -m clickstream.models.training.distributed [--device cuda] OUT_DIR [JOB]

One launching process (node rank 0, the leader) prepares the Job and passes its file; the
launchers of the other nodes pass none. The ranks join torchrun's rendezvous, the rank that got
the file broadcasts the job to all (so every rank trains the same snapshot, whatever machine it
is on), and each rank reads and trains on its own shard (models.training.job). The leading rank
writes the checkpoints, one line per finished epoch to OUT_DIR/epochs.jsonl and OUT_DIR/result.pt;
every node's first rank writes OUT_DIR/node.json: the ranks' common weights digest, or why there
was nothing to train. The ranks compare their final weights and fail the job if they differ.

`fit_ranks` is what training calls: `train_rank` in this process for one rank on one machine, else
torchrun; `join_ranks` is what the launcher of another node calls.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from clickstream.models.device import resolve_device
from clickstream.models.torch_files import save_torch
from clickstream.models.training.fit import EpochStats, FitResult
from clickstream.models.training.job import Job, train_rank, weights_digest
from clickstream.models.training.nodes import Nodes
from clickstream.pipeline.core.errors import ClickstreamError, TrainingError
from clickstream.pipeline.core.progress import log_to_stderr

JOB = "job.pkl"
RESULT = "result.pt"
ERROR = "error.txt"
NODE = "node.json"
EPOCHS = "epochs.jsonl"  # the leading rank appends one EpochStats per finished epoch
POLL_S = 2.0  # how often the launcher relays finished epochs while the ranks train


@dataclass(frozen=True)
class NodeSummary:
    """What one node's ranks did: trained (all ranks ending with weights `weights_sha256`) or stopped.
    `node` is the launcher's --node-rank (torchrun's c10d rendezvous orders the groups as they arrive)."""

    node: int
    nodes: int
    world: int
    weights_sha256: str = ""
    stop: str | None = None

    def __str__(self) -> str:
        where = f"node {self.node} of {self.nodes}"
        if self.stop is not None:
            return f"{where}: nothing trained ({self.stop})"
        return f"{where}: trained with {self.world} ranks in all; weights sha256 {self.weights_sha256} on every rank"


def _append_epoch(path: Path) -> Callable[[EpochStats], None]:
    def append(stats: EpochStats) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps(asdict(stats)) + "\n")

    return append


def _shared_job(path: Path | None) -> tuple[Job, bool]:
    """The job every rank trains, and whether this rank leads: the lowest rank whose launcher
    passed the job file reads it and broadcasts it to all."""
    has = [False] * dist.get_world_size()
    dist.all_gather_object(has, path is not None)
    if not any(has):
        raise TrainingError("no node passed a training job: start node rank 0 (the leader) as well")
    leader = has.index(True)
    shared = [None]
    if dist.get_rank() == leader:
        assert path is not None
        shared = [pickle.loads(path.read_bytes())]  # written by this job's own launcher, in its private folder
    dist.broadcast_object_list(shared, src=leader)
    return shared[0], dist.get_rank() == leader


def main(argv: list[str] | None = None) -> None:
    """Entry point for each torchrun rank: join the group, take the job, train, report."""
    parser = argparse.ArgumentParser(description="One rank of a training (run under torchrun).")
    parser.add_argument("out", type=Path)
    parser.add_argument("job", type=Path, nargs="?")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="nccl on cuda, gloo on cpu")
    args = parser.parse_args(argv)
    log_to_stderr()  # each rank's progress and epoch lines, as the launching command shows its own

    device = args.device
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    node_first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1")), int(os.environ.get("GROUP_RANK", "0"))
    try:
        job, lead = _shared_job(args.job)
        if job.stop is not None:
            if node_first:
                _write_node(args.out, NodeSummary(nodes[1], nodes[0], dist.get_world_size(), stop=job.stop))
            return
        try:
            result = train_rank(
                job,
                local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                lead=lead,
                on_epoch=_append_epoch(args.out / EPOCHS) if lead else None,
            )
        except ClickstreamError as error:
            (args.out / ERROR).write_text(str(error))
            raise
        digest = weights_digest(result.model)
        digests = [""] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            message = f"the ranks ended with different weights ({len(set(digests))} digests); the training is void"
            (args.out / ERROR).write_text(message)
            raise TrainingError(message)
    finally:
        dist.destroy_process_group()
    if node_first:
        _write_node(args.out, NodeSummary(nodes[1], nodes[0], len(digests), weights_sha256=digest))
    if lead:
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


def _write_node(out: Path, summary: NodeSummary) -> None:
    (out / NODE).write_text(json.dumps(asdict(summary)))


def check_ranks(ranks: int, device: str) -> None:
    """TrainingError (one line) unless `ranks` processes can train on `device` on this machine: one
    GPU each on CUDA (`auto` included: asking for ranks asks for GPUs), any number of gloo ranks on `cpu`."""
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


def _run_ranks(
    job: Job | None,
    *,
    ranks: int,
    device: str,
    nodes: Nodes,
    workdir: Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> None:
    """torchrun `ranks` processes here (of `nodes`), with `job` when this is the leader; relays the
    finished epochs to `on_epoch` while they train (so a killed run has logged the epochs its
    checkpoint holds). TrainingError with the rank's message when they fail."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, ERROR, EPOCHS, NODE, JOB):
        (workdir / stale).unlink(missing_ok=True)
    rank_device = resolve_device(device).type
    command = [*nodes.torchrun(ranks), "-m", "clickstream.models.training.distributed", "--device", rank_device]
    command.append(str(workdir))
    if job is not None:
        (workdir / JOB).write_bytes(pickle.dumps(job))
        command.append(str(workdir / JOB))
    relayed = 0

    def relay() -> None:
        nonlocal relayed
        path = workdir / EPOCHS
        complete = (path.read_text() if path.exists() else "").split("\n")[:-1]  # the last may be partial
        for line in complete[relayed:]:
            if on_epoch is not None:
                on_epoch(EpochStats(**json.loads(line)))
        relayed = len(complete)

    with subprocess.Popen(command) as process:
        while True:
            try:
                process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                relay()
            except BaseException:  # KeyboardInterrupt, task timeout: stop the ranks with us
                process.terminate()
                process.wait()
                raise
    relay()
    if (workdir / ERROR).exists():
        raise TrainingError((workdir / ERROR).read_text())
    if process.returncode != 0:
        raise TrainingError(f"distributed training exited with code {process.returncode}; see the ranks' log above")


def fit_ranks(
    job: Job,
    *,
    ranks: int = 1,
    nodes: Nodes = Nodes(),
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """The leader's training of `job`: `train_rank` in this process for one rank on one machine,
    else `ranks` processes here through torchrun (joined by the other nodes' `join_ranks`). The
    model comes back with the best weights, on CPU in eval mode; the same checkpoints, resume and
    `on_epoch` either way."""
    if ranks == 1 and nodes.count == 1:
        return train_rank(job, on_epoch=on_epoch)
    with tempfile.TemporaryDirectory(prefix="clickstream-ranks-") as folder:
        workdir = Path(folder)
        _run_ranks(job, ranks=ranks, device=job.config.device, nodes=nodes, workdir=workdir, on_epoch=on_epoch)
        if not (workdir / RESULT).exists():
            raise TrainingError("distributed training ended without a result; see the ranks' log above")
        state = torch.load(workdir / RESULT, weights_only=True)
    model = job.model()
    model.load_state_dict(state["model"])
    history = [EpochStats(**s) for s in state["history"]]
    return FitResult(
        model.eval(), history, state["best_epoch"], state["best_val_auc"], state["device"], state["resumed_epochs"]
    )


def release_nodes(job: Job, *, ranks: int, nodes: Nodes) -> None:
    """Tell the other nodes, waiting at the rendezvous, that there is nothing to train (`job.stop`)."""
    if nodes.count > 1:
        with tempfile.TemporaryDirectory(prefix="clickstream-ranks-") as folder:
            _run_ranks(job, ranks=ranks, device=job.config.device, nodes=nodes, workdir=Path(folder))


def join_ranks(*, ranks: int, device: str, nodes: Nodes) -> NodeSummary:
    """A non-leading node's part: `ranks` processes here join the rendezvous and train the job the
    leader broadcasts; what they did."""
    with tempfile.TemporaryDirectory(prefix="clickstream-ranks-") as folder:
        workdir = Path(folder)
        _run_ranks(None, ranks=ranks, device=device, nodes=nodes, workdir=workdir)
        if not (workdir / NODE).exists():
            raise TrainingError("the ranks of this node ended without a summary; see their log above")
        ran = json.loads((workdir / NODE).read_text())
        return NodeSummary(**{**ran, "node": nodes.rank, "nodes": nodes.count})  # c10d numbers its groups itself


if __name__ == "__main__":
    main()
