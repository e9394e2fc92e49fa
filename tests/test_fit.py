"""The fit loop: it learns, it stops, it checkpoints, it resumes to the same weights, and
it refuses to produce a model from a diverged run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.training.checkpoints import CHECKPOINT
from clickstream.models.training.fit import (
    MIN_BATCH_SIZE,
    MIN_STEPS_PER_EPOCH,
    EpochStats,
    epoch_batch_size,
    epoch_learning_rate,
    fit,
)
from clickstream.pipeline.core.config import ModelConfig, TrainConfig
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, synthetic_tensors

N_ITEMS = 60
TINY = ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=16)
FAST = TrainConfig(epochs=2, batch_size=256, learning_rate=2e-2, patience=10, device="cpu", seed=3)


def tiny_model(seed: int = 0) -> BuyIntentLSTM:
    torch.manual_seed(seed)
    return BuyIntentLSTM(TINY, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


@pytest.fixture(scope="module")
def data():
    """Enough sessions to learn the planted signal."""
    return synthetic_tensors(4000, seed=1, n_items=N_ITEMS), synthetic_tensors(1000, seed=2, n_items=N_ITEMS)


@pytest.fixture(scope="module")
def small():
    """Enough sessions to exercise the loop."""
    return synthetic_tensors(1000, seed=1, n_items=N_ITEMS), synthetic_tensors(300, seed=2, n_items=N_ITEMS)


def last_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_dir / CHECKPOINT, weights_only=True)["model"]


def test_given_a_learnable_task_when_fitted_then_validation_auc_passes_0_8(data):
    train, val = data
    seen = []
    result = fit(train, val, tiny_model(), replace(FAST, epochs=4), on_epoch=seen.append)
    assert result.best_val_auc > 0.8
    assert seen == result.history and [s.epoch for s in seen] == [1, 2, 3, 4]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_auc == max(s.val_auc for s in result.history)
    assert all(s.sessions_per_s > 0 and math.isfinite(s.val_logloss) for s in seen)
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"
    assert result.device == "cpu"


@pytest.mark.parametrize(("before", "configured"), [(2, 1), (1, 2)])
def test_given_cpu_threads_when_fitting_on_cpu_then_epochs_run_on_them_and_torch_count_is_restored(
    small, before, configured
):
    train, val = small
    inside = []
    torch.set_num_threads(before)
    try:
        config = replace(FAST, epochs=1, cpu_threads=configured)
        fit(train, val, tiny_model(), config, on_epoch=lambda _: inside.append(torch.get_num_threads()))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert inside == [configured]
    assert after == before


def test_given_a_run_killed_after_one_epoch_when_resumed_then_weights_equal_an_uninterrupted_run(small, tmp_path):
    train, val = small
    whole = fit(train, val, tiny_model(), FAST, checkpoint_dir=tmp_path / "whole")
    fit(train, val, tiny_model(), replace(FAST, epochs=1), checkpoint_dir=tmp_path / "cut")
    resumed = fit(train, val, tiny_model(seed=99), FAST, checkpoint_dir=tmp_path / "cut", resume=True)

    uninterrupted, continued = last_weights(tmp_path / "whole"), last_weights(tmp_path / "cut")
    assert all(torch.equal(uninterrupted[k], continued[k]) for k in uninterrupted)
    assert [s.train_loss for s in resumed.history] == [s.train_loss for s in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    best_whole, best_resumed = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(best_whole[k], best_resumed[k]) for k in best_whole)


def test_given_a_checkpoint_from_other_settings_when_resuming_then_training_error(small, tmp_path):
    train, val = small
    fit(train, val, tiny_model(), replace(FAST, epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(TrainingError, match="other data or settings"):
        fit(train, val, tiny_model(), replace(FAST, batch_size=128), checkpoint_dir=tmp_path, resume=True)


def test_given_no_auc_gain_for_patience_epochs_then_training_stops_early(small):
    train, val = small
    frozen = replace(FAST, epochs=6, patience=2, learning_rate=0.0)
    result = fit(train, val, tiny_model(), frozen)
    assert [s.epoch for s in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_given_epochs_without_an_auc_gain_then_the_learning_rate_halves_after_each_of_them():
    config = TrainConfig(learning_rate=0.008, lr_decay=0.5)
    aucs = [0.60, 0.70, 0.69, 0.71, 0.71, 0.65]  # a tie is no gain
    history = [EpochStats(n + 1, 0.1, auc, 0.2, 1.0, 1.0) for n, auc in enumerate(aucs)]

    rates = [epoch_learning_rate(config, history[:done]) for done in range(len(aucs) + 1)]

    assert rates == [0.008, 0.008, 0.008, 0.004, 0.004, 0.002, 0.001]
    assert epoch_learning_rate(replace(config, lr_decay=1.0), history) == 0.008


def test_given_a_loss_that_becomes_nan_then_fit_raises_training_error(small):
    train, val = small
    poisoned = replace(train, stored=train.stored.clone())
    poisoned.stored[0, 5] = math.nan
    with pytest.raises(TrainingError, match="nan"):
        fit(poisoned, val, tiny_model(), FAST)


def test_given_unlabelled_sessions_then_fit_refuses_them(small):
    train, val = small
    unlabelled = replace(train, label=train.label.clone())
    unlabelled.label[0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(unlabelled, val, tiny_model(), FAST)


def test_given_a_one_class_validation_set_then_training_error(small):
    train, val = small
    with pytest.raises(TrainingError, match="one class"):
        fit(train, replace(val, label=torch.zeros_like(val.label)), tiny_model(), FAST)


def test_given_a_small_training_set_then_batches_shrink_to_give_each_epoch_enough_steps():
    assert epoch_batch_size(300_000, 4096) == 300_000 // MIN_STEPS_PER_EPOCH
    assert epoch_batch_size(1_000, 4096) == MIN_BATCH_SIZE
    assert epoch_batch_size(9_250_000, 16384) == 16384  # large sets keep the configured size
    assert epoch_batch_size(100, 128) == 128  # never above the configured size
    assert epoch_batch_size(600_000, 4096, world_size=2) == 600_000 // (2 * MIN_STEPS_PER_EPOCH)
