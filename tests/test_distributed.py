"""Data-parallel training: two CPU processes over gloo, each on its own uneven shard, end with the
same weights, and learn; the CLI's --gpus launches them and registers one model; two nodes meet
at a c10d rendezvous through the real CLI; asking for more GPUs than exist is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures import labelled_lake

from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.registry.store import alias_version, tracking_client
from clickstream.models.training.distributed import check_ranks, fit_ranks
from clickstream.models.training.job import Job, count_window, train_rank
from clickstream.models.training.nodes import Nodes
from clickstream.models.training.shards import assign
from clickstream.models.training.train import WEIGHTS_DIGEST_TAG
from clickstream.models.training.window import prepare
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.schemas import EVENT_TYPES

CLI = [sys.executable, "-c", "from clickstream.pipeline.orchestrate.cli import main; main()"]


def job_of(settings: Settings, tmp_path: Path, **train: object) -> Job:
    """The job `clickstream train` would give its ranks for the whole lake, tiny model, CPU."""
    config = replace(settings.train, device="cpu", **train)
    window = prepare(settings, config, None, None)
    vocabulary = count_window(window, settings.sequences)
    sizes = (vocabulary.n_items, vocabulary.n_categories, len(EVENT_TYPES) + 1, len(CONTINUOUS_FEATURES))
    torch.manual_seed(0)
    weights = BuyIntentLSTM(settings.model, *sizes).state_dict()
    return Job(window, vocabulary, settings.model, sizes, weights, config, checkpoint_dir=str(tmp_path / "checkpoints"))


def _rank(rank: int, world_size: int, job: Job, out: Path) -> None:
    """One spawned rank: join a file-store gloo group, train its shard, save what it ended with."""
    torch.set_num_threads(1)  # as torchrun does: two ranks share the cores
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world_size)
    try:
        result = train_rank(job)
    finally:
        dist.destroy_process_group()
    losses = [s.train_loss for s in result.history]
    torch.save({"weights": result.model.state_dict(), "losses": losses}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_given_two_gloo_ranks_on_uneven_shards_then_both_end_with_identical_weights_and_the_loss_decreased(
    tmp_path: Path,
) -> None:
    job = job_of(labelled_lake(tmp_path, sessions=3000, days=5), tmp_path, epochs=3)
    shares = assign([s.sessions for s in job.window.train.surveys], 2)
    loads = [sum(job.window.train.surveys[i].sessions for i in share) for share in shares]
    assert loads[0] != loads[1]  # the ranks run different numbers of batches: DDP's Join evens them out
    mp.spawn(_rank, args=(2, job, tmp_path), nprocs=2)

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert rank0["losses"] == rank1["losses"]  # all-reduced: every rank reports the global loss
    assert rank0["losses"][-1] < rank0["losses"][0]
    head = {k: v for k, v in job.initial_weights.items() if k.startswith("head.")}
    assert head and not all(torch.equal(rank0["weights"][k], v) for k, v in head.items())
    assert (tmp_path / "checkpoints" / "last.pt").exists()  # written by the leading rank


@pytest.mark.slow
def test_given_torchrun_with_two_processes_then_fit_ranks_returns_the_trained_model(tmp_path: Path) -> None:
    job = job_of(labelled_lake(tmp_path), tmp_path)
    result = fit_ranks(job, ranks=2)
    assert not result.model.training
    assert [s.epoch for s in result.history] == [1, 2]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_auc == max(s.val_auc for s in result.history)


@pytest.mark.slow
def test_given_a_diverging_distributed_run_then_training_error_with_the_ranks_message(tmp_path: Path) -> None:
    job = job_of(labelled_lake(tmp_path), tmp_path, learning_rate=1e12, grad_clip=1e12)
    with pytest.raises(TrainingError, match="training loss became"):
        fit_ranks(job, ranks=2)


def test_given_more_gpus_than_torch_sees_then_a_one_line_error_and_cpu_ranks_are_always_allowed():
    too_many = torch.cuda.device_count() + 1
    with pytest.raises(TrainingError, match=rf"--gpus {too_many} asked for {too_many} GPUs but torch sees"):
        check_ranks(too_many, "auto")
    with pytest.raises(TrainingError, match="at least 1"):
        check_ranks(0, "cpu")
    check_ranks(4, "cpu")  # gloo ranks need no GPU


@pytest.mark.slow
def test_given_a_labelled_lake_when_the_cli_trains_with_two_cpu_ranks_then_one_version_is_registered(tmp_path):
    settings = labelled_lake(tmp_path)
    env = {**os.environ, "CLICKSTREAM_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.tracking_uri}
    done = subprocess.run(
        [*CLI, "train", "--gpus", "2", "--device", "cpu", "--epochs", "2", "--lake", settings.lake],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "v1 registered as challenger" in done.stdout

    client = tracking_client(settings)
    (version,) = client.search_model_versions(f"name='{settings.model_name}'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["gpus"] == "2"
    metrics = run.data.metrics
    assert 0.0 <= metrics["val_auc"] <= 1.0 and metrics["epochs_run"] == 2 and metrics["val_logloss"] > 0
    # the epochs rank 0 finished, relayed to the launching process's run while training
    epoch_aucs = client.get_metric_history(run.info.run_id, "epoch_val_auc")
    assert [m.step for m in epoch_aucs] == [1, 2]
    # the registered weights are the best epoch's, as rank 0 measured them; the registered val_auc is
    # scored again in the scorer's batches and calibrated, where float32 rounding can tie near-equal
    # scores: this two-epoch model is near chance, so its Platt slope is tiny (about 1e-6) and the
    # calibrated scores of many sessions round to the same float32
    best = max(epoch_aucs, key=lambda m: m.value)
    assert metrics["best_epoch"] == best.step and metrics["val_auc"] == pytest.approx(best.value, abs=5e-3)
    assert alias_version(settings, "challenger") == "1"
    assert not Lake(settings.lake).fs.exists(f"{settings.checkpoints}/{version.tags['fingerprint'][:16]}")


def _train_on_two_nodes(settings: Settings, port: int) -> tuple[subprocess.CompletedProcess, ...]:
    """`clickstream train` as node 0 and node 1 of two, one CPU rank each, meeting on 127.0.0.1."""
    env = {**os.environ, "CLICKSTREAM_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.tracking_uri}
    common = ["train", "--device", "cpu", "--epochs", "2", "--lake", settings.lake, "--nodes", "2"]
    common += ["--rendezvous", f"127.0.0.1:{port}"]
    nodes = [
        subprocess.Popen(
            [*CLI, *common, "--node-rank", str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (1, 0)  # the follower first: it waits at the rendezvous for the leader
    ]
    done = []
    for node in nodes:
        stdout, stderr = node.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    return done[1], done[0]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_given_two_nodes_through_the_cli_then_one_version_is_registered_and_both_ranks_end_with_its_weights(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path)
    leader, follower = _train_on_two_nodes(settings, _free_port())
    assert leader.returncode == 0, leader.stderr[-3000:]
    assert follower.returncode == 0, follower.stderr[-3000:]
    assert "v1 registered as challenger" in leader.stdout
    client = tracking_client(settings)
    (version,) = client.search_model_versions(f"name='{settings.model_name}'")
    run = client.get_run(version.run_id)
    assert run.data.params["nodes"] == "2"
    digest = run.data.tags[WEIGHTS_DIGEST_TAG]
    assert f"node 1 of 2: trained with 2 ranks in all; weights sha256 {digest} on every rank" in follower.stdout

    # the nightly's re-run: the leader re-uses the version and releases the follower, which trains nothing
    leader, follower = _train_on_two_nodes(settings, _free_port())
    assert leader.returncode == follower.returncode == 0, follower.stderr[-3000:]
    assert "v1 re-used" in leader.stdout
    assert "node 1 of 2: nothing trained (v1 already holds this window)" in follower.stdout
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == 1


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (Nodes(2, 2, "host:29400"), "--node-rank must be in 0..1 for --nodes 2, not 2"),
        (Nodes(2, 0, None), "--nodes above 1 needs --rendezvous HOST:PORT"),
        (Nodes(2, 1, "host"), "--rendezvous must be HOST:PORT, not 'host'"),
    ],
)
def test_given_nodes_that_do_not_agree_then_a_one_line_error(nodes: Nodes, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        nodes.check()
