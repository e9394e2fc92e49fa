"""Data-parallel training: two CPU processes over gloo end with the same weights, and learn; the
CLI's --gpus launches them and registers one model; asking for more GPUs than exist is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures import labelled_lake

from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.registry.store import alias_version, tracking_client
from clickstream.models.training.distributed import check_ranks, fit_distributed, load_job, train_rank, write_job
from clickstream.pipeline.core.config import ModelConfig, TrainConfig
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, synthetic_tensors

N_ITEMS = 60
CONFIG = TrainConfig(epochs=2, batch_size=128, learning_rate=2e-2, patience=10, device="cpu")


def tiny_model() -> BuyIntentLSTM:
    torch.manual_seed(0)
    config = ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=16)
    return BuyIntentLSTM(config, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


def data():
    return synthetic_tensors(1000, seed=1, n_items=N_ITEMS), synthetic_tensors(300, seed=2, n_items=N_ITEMS)


def _rank(rank: int, world_size: int, job: Path, out: Path) -> None:
    """One spawned rank: join a file-store gloo group, train, save what this rank ended with."""
    torch.set_num_threads(1)  # as torchrun does: two ranks share the cores
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world_size)
    try:
        result = train_rank(load_job(job))
    finally:
        dist.destroy_process_group()
    losses = [s.train_loss for s in result.history]
    torch.save({"weights": result.model.state_dict(), "losses": losses}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_given_two_gloo_ranks_then_both_end_with_identical_weights_and_the_loss_decreased(tmp_path):
    train, val = data()
    initial = tiny_model()
    write_job(tmp_path / "job.pt", train, val, initial, CONFIG, checkpoint_dir=tmp_path / "checkpoints")
    mp.spawn(_rank, args=(2, tmp_path / "job.pt", tmp_path), nprocs=2)

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert rank0["losses"] == rank1["losses"]  # all-reduced: every rank reports the global loss
    assert rank0["losses"][-1] < rank0["losses"][0]
    head = {k: v for k, v in initial.state_dict().items() if k.startswith("head.")}
    assert head and not all(torch.equal(rank0["weights"][k], v) for k, v in head.items())
    assert (tmp_path / "checkpoints" / "last.pt").exists()  # written by rank 0


@pytest.mark.slow
def test_given_torchrun_with_two_processes_then_fit_distributed_returns_the_trained_model(tmp_path):
    train, val = data()
    model = tiny_model()
    result = fit_distributed(train, val, model, CONFIG, nproc=2, workdir=tmp_path)
    assert result.model is model and not model.training
    assert [s.epoch for s in result.history] == [1, 2]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_auc == max(s.val_auc for s in result.history)


@pytest.mark.slow
def test_given_a_diverging_distributed_run_then_training_error_with_the_ranks_message(tmp_path):
    train, val = data()
    train.stored[0, 3] = float("nan")
    with pytest.raises(TrainingError, match="training loss became nan"):
        fit_distributed(train, val, tiny_model(), CONFIG, nproc=2, workdir=tmp_path)


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
    command = [sys.executable, "-c", "from clickstream.pipeline.orchestrate.cli import main; main()"]
    done = subprocess.run(
        [*command, "train", "--gpus", "2", "--device", "cpu", "--epochs", "2", "--lake", settings.lake],
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
