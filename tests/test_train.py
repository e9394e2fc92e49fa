"""`clickstream train`: one MLflow run per window with its datasets and system metrics, a
registered, calibrated challenger with a truthful signature, idempotent re-runs, resume after
a kill, killed runs that do not stay RUNNING, and guards that fail the run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import pytest
from fixtures import labelled_lake, synthetic_sequences, write_sequences

from clickstream.features.sequences import read_sequences
from clickstream.models.calibration import METHODS, UNCALIBRATED
from clickstream.models.evaluation import auc, expected_calibration_error
from clickstream.models.registry.loading import load_model
from clickstream.models.registry.store import alias_version, tracking_client
from clickstream.models.training import train as train_module
from clickstream.models.training.fit import RESUME_OR_RESTART
from clickstream.models.training.train import TrainSummary, code_version, train_and_register, train_challenger
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.processes import owner

NAME = "clickstream-buy-intent"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainSummary]:
    settings = labelled_lake(tmp_path_factory.mktemp("train"))
    # a system metrics sample every 0.1 s, not every 10: a tiny training on a busy machine still gets several
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
        return settings, train_and_register(settings, None, None, device="cpu", promote=True)


def test_given_a_labelled_window_when_trained_then_one_finished_run_logs_params_metrics_and_artifacts(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    client = tracking_client(settings)
    run = client.get_run(summary.run_id)

    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert (params["window_start"], params["window_end"]) == ("2014-04-01", "2014-04-04")
    assert (params["val_start"], params["val_end"]) == ("2014-04-03", "2014-04-04")
    assert params["code_version"] == code_version() and params["model_hidden_size"] == "16"
    assert int(params["train_sessions"]) + int(params["val_sessions"]) == 2000
    for name in ("val_auc", "val_pr_auc", "val_logloss", "val_calibration_error", "gbm_val_auc", "gbm_val_logloss"):
        assert 0.0 <= metrics[name] <= 1.0 or name.endswith("logloss"), name
    assert any(name.startswith("val_auc_len_") for name in metrics)
    history = client.get_metric_history(summary.run_id, "epoch_train_loss")
    assert [m.step for m in history] == list(range(1, int(metrics["epochs_run"]) + 1))
    artifacts = {a.path for folder in ("plots", "vocabulary") for a in client.list_artifacts(summary.run_id, folder)}
    assert {"plots/roc.png", "plots/calibration.png", "vocabulary/vocabulary.json"} <= artifacts
    assert summary.val_auc == metrics["val_auc"] and summary.gbm_val_auc == metrics["gbm_val_auc"]


def test_given_a_trained_window_then_its_version_is_challenger_with_window_tags_and_a_signature(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    version = tracking_client(settings).get_model_version(NAME, summary.version)

    assert alias_version(settings, "challenger") == summary.version == "1"
    assert version.tags["val_start"] == "2014-04-03" and len(version.tags["fingerprint"]) == 64
    signature = mlflow.models.get_model_info(f"models:/{NAME}/1").signature
    inputs = {spec.name: spec for spec in signature.inputs.inputs}
    assert {"session_id", "item_id", "category", "event_type"} == set(signature.inputs.required_input_names())
    assert str(inputs["log_gap_prev"].type) == "Array(double)" and not {"label", "cookie_id", "log_dwell"} & set(inputs)
    assert signature.outputs.input_names() == ["session_id", "score"]


def test_given_a_trained_window_then_its_run_logs_both_datasets_system_metrics_and_metrics_on_the_logged_model(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    client = tracking_client(settings)
    run = client.get_run(summary.run_id)

    datasets = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert datasets["training"].name == "sequences 2014-04-01..2014-04-02"
    assert datasets["validation"].name == "sequences 2014-04-03..2014-04-04"
    assert datasets["training"].digest != datasets["validation"].digest
    assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics)
    (model_id,) = {output.model_id for output in run.outputs.model_outputs}
    linked = {m.key: m for m in mlflow.get_logged_model(model_id).metrics}
    assert linked["val_auc"].value == summary.val_auc
    assert linked["val_auc"].dataset_digest == datasets["validation"].digest


def test_given_a_trained_window_then_its_scores_are_calibrated_on_the_validation_days_with_auc_unchanged(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    run = tracking_client(settings).get_run(summary.run_id)
    metrics = run.data.metrics
    val = read_sequences(Lake(settings.lake), *summary.validation)
    scorer = load_model(settings, f"models:/{NAME}/{summary.version}", device="cpu")

    calibrated = scorer.score(val)
    raw = dataclasses.replace(scorer, calibration=UNCALIBRATED).score(val)

    assert run.data.params["calibration"] == scorer.calibration.method in METHODS
    assert metrics["val_ece_raw"] == pytest.approx(expected_calibration_error(val["label"].to_numpy(), raw), abs=1e-6)
    assert metrics["val_ece"] == min(metrics[f"val_ece_heldout_{method}"] for method in METHODS)
    assert auc(val["label"].to_numpy(), calibrated) == pytest.approx(auc(val["label"].to_numpy(), raw), abs=1e-6)
    assert {"plots/calibration.png", "plots/roc.png"} <= {
        a.path for a in tracking_client(settings).list_artifacts(summary.run_id, "plots")
    }


def test_given_the_logged_val_auc_then_the_registered_model_reproduces_it_on_the_validation_days(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    val = read_sequences(Lake(settings.lake), *summary.validation)

    scores = load_model(settings, f"models:/{NAME}/{summary.version}", device="cpu").score(val)

    assert auc(val["label"].to_numpy(), scores) == pytest.approx(summary.val_auc, abs=1e-9)


def test_given_the_same_window_and_data_when_trained_again_then_the_version_is_reused_without_a_new_run(
    trained: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = trained
    client = tracking_client(settings)
    runs_before = len(client.search_runs([client.get_experiment_by_name("clickstream").experiment_id]))

    again = train_challenger(settings, None, None, device="cpu")

    assert again.reused and again.version == summary.version and again.run_id == summary.run_id
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert len(client.search_runs([client.get_experiment_by_name("clickstream").experiment_id])) == runs_before
    assert str(again).count("\n") == 0 and f"v{summary.version}" in str(again) and "GBM" in str(again)


@pytest.mark.slow
def test_given_a_run_killed_after_its_first_epoch_when_resumed_then_it_continues_that_run_and_registers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = labelled_lake(tmp_path, sessions=1200, seed=4)
    log_epoch = train_module._log_epoch

    def killed_after_epoch_1(stats: object) -> None:
        log_epoch(stats)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_log_epoch", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_challenger(settings, None, None, device="cpu")
    monkeypatch.setattr(train_module, "_log_epoch", log_epoch)

    summary = train_challenger(settings, None, None, device="cpu", resume=True)

    client = tracking_client(settings)
    runs = client.search_runs([client.get_experiment_by_name("clickstream").experiment_id])
    assert [r.info.run_id for r in runs] == [summary.run_id] and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(summary.run_id, "epoch_train_loss")] == [1, 2]
    assert [v.version for v in client.search_model_versions(f"name='{NAME}'")] == [1]


_KILLED_AFTER_EPOCH_1 = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fixtures import tiny_settings
from clickstream.models.training import train
from clickstream.pipeline.core.config import load_settings

settings = tiny_settings(load_settings(lake=sys.argv[2], home=Path(sys.argv[3]), environ={}))
log_epoch = train._log_epoch


def killed(stats):
    log_epoch(stats)
    os._exit(9)  # as SIGKILL: no `finally`, no end of the MLflow run


train._log_epoch = killed
train.train_challenger(settings, None, None, device="cpu")
"""


@pytest.mark.slow
def test_given_a_run_killed_mid_training_when_the_window_is_trained_again_then_that_run_is_killed_not_running(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=1200, seed=4)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_EPOCH_1, str(Path(__file__).parent), settings.lake, str(settings.home)],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name("clickstream").experiment_id
    (left,) = client.search_runs([experiment])
    assert killed.returncode == 9 and left.info.status == "RUNNING"

    summary = train_challenger(settings, None, None, device="cpu")

    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert statuses == {left.info.run_id: "KILLED", summary.run_id: "FINISHED"}
    assert "ended without finishing" in client.get_run(left.info.run_id).data.tags["failure_reason"]


def test_given_a_running_run_of_a_live_process_when_the_window_is_trained_then_it_is_left_running(
    settings: Settings,
) -> None:
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name("clickstream").experiment_id
    tags = {"fingerprint": "f" * 64}
    live = client.create_run(experiment, tags={**tags, "owner": owner()})
    gone = client.create_run(experiment, tags={**tags, "owner": f"{socket.gethostname()}:{2**22 + 12345}"})

    resumed = train_module._end_abandoned_runs(client, "f" * 64, resume=False)

    assert resumed == (None, False)
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
    assert client.get_run(gone.info.run_id).info.status == "KILLED"


@pytest.mark.parametrize("resume", [True, RESUME_OR_RESTART])
def test_given_an_unfinished_run_of_other_code_when_resuming_then_a_new_run_trains_afresh_and_that_one_is_killed(
    settings: Settings, resume: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name("clickstream").experiment_id
    tags = {"fingerprint": "e" * 64, "owner": f"{socket.gethostname()}:{2**22 + 12345}"}  # a process that is gone
    older = client.create_run(experiment, tags=tags)
    client.log_param(older.info.run_id, "code_version", code_version())
    newest = client.create_run(experiment, tags=tags)
    client.log_param(newest.info.run_id, "code_version", "0123456789ab")

    resumed = train_module._end_abandoned_runs(client, "e" * 64, resume=resume)

    assert resumed == (None, False)
    assert {client.get_run(r.info.run_id).info.status for r in (older, newest)} == {"KILLED"}
    assert f"run {newest.info.run_id} was trained by code 0123456789ab" in caplog.text


def test_given_an_unfinished_run_of_this_code_when_resuming_then_it_is_continued(settings: Settings) -> None:
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name("clickstream").experiment_id
    failed = client.create_run(experiment, tags={"fingerprint": "d" * 64, "owner": owner()})
    client.log_param(failed.info.run_id, "code_version", code_version())
    client.set_terminated(failed.info.run_id, "FAILED")

    assert train_module._end_abandoned_runs(client, "d" * 64, resume=True) == (failed.info.run_id, True)


def _nan_features(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("log_gap_prev").list.eval(pl.element() * float("nan")))


def _one_class_validation(frame: pl.DataFrame) -> pl.DataFrame:
    is_val = pl.col("session_start").dt.date() >= dt.date(2014, 4, 3)
    return frame.with_columns(label=pl.when(is_val).then(False).otherwise(pl.col("label")))


@pytest.mark.parametrize(
    ("case", "prepare", "window", "overrides", "reason"),
    [
        ("empty window", None, (dt.date(2015, 1, 1), dt.date(2015, 1, 9)), {}, "no labelled sessions"),
        ("one-class validation", _one_class_validation, (None, None), {}, "single class"),
        ("too few buyers", None, (None, None), {"min_positives": 100_000}, "at least 100000"),
        ("NaN loss", _nan_features, (None, None), {}, "loss became nan"),
    ],
)
def test_given_an_untrainable_window_when_trained_then_training_error_run_failed_and_champion_untouched(
    trained: tuple[Settings, TrainSummary], tmp_path: Path, case, prepare, window, overrides, reason
) -> None:
    base, _ = trained
    settings = dataclasses.replace(
        base, lake=str(tmp_path / "lake"), train=dataclasses.replace(base.train, **overrides)
    )
    frame = synthetic_sequences(sessions=600, days=4, seed=11)
    write_sequences(Lake(settings.lake), prepare(frame) if prepare else frame)
    client = tracking_client(settings)
    versions_before = len(client.search_model_versions(f"name='{NAME}'"))

    with pytest.raises(TrainingError, match=reason) as error:
        train_and_register(settings, *window, device="cpu", promote=True)

    assert "\n" not in str(error.value), case
    newest = client.search_runs(
        [client.get_experiment_by_name("clickstream").experiment_id], order_by=["attributes.start_time DESC"]
    )[0]
    assert newest.info.status == "FAILED" and reason in newest.data.tags["failure_reason"]
    assert alias_version(settings, "champion") == "1" and alias_version(settings, "challenger") == "1"
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions_before
