"""`clickstream tune`: trials as nested MLflow runs, the best settings written to the lake with
their feature signature, picked up by `train`, and never applied to another feature schema."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from fixtures import labelled_lake

from clickstream.models.registry.store import tracking_client
from clickstream.models.training.train import train_challenger
from clickstream.models.training.tuned import TUNED_FILE, feature_signature, read_tuned, with_tuned
from clickstream.models.training.tuning import TUNE_TAG, TuneSummary, neighbours, tune
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError, NoDataError
from clickstream.pipeline.core.lake import Lake

TINY_SPACE = {
    "model.hidden_size": ("choice", (8, 16)),
    "model.head_hidden": ("choice", (0, 32)),
    "train.learning_rate": ("log", (5e-3, 3e-2)),
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TuneSummary]:
    settings = labelled_lake(tmp_path_factory.mktemp("tune"))
    return settings, tune(settings, None, None, trials=2, epochs=2, device="cpu", space=TINY_SPACE)


def test_given_a_tiny_search_then_each_trial_is_a_nested_run_under_one_tune_run(
    tuned: tuple[Settings, TuneSummary],
) -> None:
    settings, summary = tuned
    client = tracking_client(settings)
    parent = client.get_run(summary.run_id)
    assert parent.data.tags[TUNE_TAG] == "2014-04-01..2014-04-04"
    assert parent.data.metrics["best_val_auc"] == summary.best_val_auc >= summary.default_val_auc
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.run_id}'", order_by=["params.trial"]
    )
    assert [run.data.params["trial"] for run in children] == ["0", "1"]
    first = children[0]  # runs the current settings
    assert (first.data.params["model.hidden_size"], first.data.params["model.head_hidden"]) == ("16", "32")
    assert float(first.data.params["train.learning_rate"]) == settings.train.learning_rate
    assert [m.step for m in client.get_metric_history(first.info.run_id, "epoch_val_auc")] == [1, 2]
    assert summary.trials == 2 and "\n" not in str(summary)


def test_given_tuned_settings_then_the_file_carries_the_best_trial_and_the_feature_signature(
    tuned: tuple[Settings, TuneSummary],
) -> None:
    settings, summary = tuned
    path = Path(Lake(settings.lake).config_file(TUNED_FILE))
    content = json.loads(path.read_text())
    assert content["signature"] == feature_signature(settings)
    assert content["val_auc"] == summary.best_val_auc and content["run_id"] == summary.run_id
    assert set(content["train"]) == {"learning_rate", "weight_decay"}
    assert not list(path.parent.glob("*.tmp-*"))  # written atomically, nothing left behind


def test_given_tuned_settings_when_training_then_train_uses_them(tuned: tuple[Settings, TuneSummary]) -> None:
    settings, _ = tuned
    stored = read_tuned(settings)
    assert stored is not None
    summary = train_challenger(settings, None, None, epochs=1, device="cpu")
    params = tracking_client(settings).get_run(summary.run_id).data.params
    assert params["model_hidden_size"] == str(stored.model["hidden_size"])
    assert params["model_head_hidden"] == str(stored.model["head_hidden"])
    assert float(params["train_learning_rate"]) == stored.train["learning_rate"]


def test_given_settings_tuned_for_other_features_then_one_warning_and_the_defaults(
    tuned: tuple[Settings, TuneSummary], caplog: pytest.LogCaptureFixture
) -> None:
    settings, _ = tuned
    other = dataclasses.replace(settings, sequences=dataclasses.replace(settings.sequences, item_min_count=5))
    assert feature_signature(other) != feature_signature(settings)
    with caplog.at_level(logging.WARNING, logger="clickstream.models.training.tuned"):
        assert with_tuned(other) == other
    (record,) = caplog.records
    assert "tuned for features" in record.getMessage() and "\n" not in record.getMessage()


def test_given_no_tuned_settings_then_settings_are_unchanged(settings: Settings) -> None:
    assert with_tuned(settings) is settings


def test_given_a_broken_tuned_file_then_a_one_line_error_naming_it(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.write_bytes(lake.config_file(TUNED_FILE), b'{"signature": "x", "model": {"hidden": 3}}')
    with pytest.raises(ClickstreamError, match=r"training\.json is not valid tuned settings"):
        with_tuned(settings)


def test_given_too_few_days_of_sequences_then_the_weekly_tune_skips_with_the_reason(settings: Settings) -> None:
    from clickstream.pipeline.orchestrate.tuning import tune_latest

    with pytest.raises(NoDataError, match="sequences/ is empty: tuning skipped"):
        tune_latest(settings, trials=1, timeout_s=None, window_days=30)
    short = labelled_lake(Path(settings.lake).parent / "short", sessions=300, days=2)
    with pytest.raises(NoDataError, match=r"tuning needs 3 days of sequences .* found 2"):
        tune_latest(short, trials=1, timeout_s=None, window_days=30)


def test_given_the_current_settings_then_neighbours_move_one_parameter_one_step_inside_the_space() -> None:
    space = {
        "model.dropout": ("float", (0.0, 0.4)),
        "train.weight_decay": ("log", (1e-6, 1e-3)),
        "model.hidden_size": ("choice", (32, 64, 96)),
        "model.max_pool": ("choice", (True, False)),
        "model.item_dim": ("choice", (0, 8)),
    }
    current = {"model.dropout": 0.35, "train.weight_decay": 1e-3, "model.hidden_size": 64, "model.max_pool": True}

    moved = neighbours(current, space)

    changes = [next((k, v) for k, v in params.items() if v != current[k]) for params in moved]
    assert changes == [
        ("model.dropout", 0.4),  # 0.45 clipped to the bound
        ("model.dropout", pytest.approx(0.25)),
        ("train.weight_decay", pytest.approx(1e-3 / 3)),  # x3 is clipped to the current value: no move
        ("model.hidden_size", 96),
        ("model.hidden_size", 32),
        ("model.max_pool", False),
    ]  # item_dim is not in `current`: not moved
    assert all(sum(v != current[k] for k, v in params.items()) == 1 for params in moved)
    assert all(set(params) == set(current) for params in moved)
