"""`clickstream tune`: trials as nested MLflow runs, the best settings written to the lake with
their feature signature, picked up by `train`, and never applied to another feature schema; the
Optuna study kept in persistent storage, so that a search started again resumes it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from pathlib import Path

import optuna
import pytest
from fixtures import labelled_lake, synthetic_sequences, write_sequences
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

from clickstream.models.registry.store import experiment_id, tracking_client
from clickstream.models.training.train import train_challenger
from clickstream.models.training.tuned import TUNED_FILE, feature_signature, read_tuned, with_tuned
from clickstream.models.training.tuning import (
    RUN_ATTR,
    STUDY_TAG,
    TUNE_TAG,
    TuneSummary,
    finished_trials,
    neighbours,
    study_storage,
    tune,
)
from clickstream.pipeline.core.config import Settings, load_settings
from clickstream.pipeline.core.errors import ClickstreamError, NoDataError, TrackingStoreError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.orchestrate.tuning import latest_window

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


# ---- a persistent study: what resumes --------------------------------------------------------------


def _tune(settings: Settings, trials: int, end: dt.date | None = None) -> TuneSummary:
    return tune(settings, None, end, trials=trials, epochs=2, device="cpu", space=TINY_SPACE)


def _study(settings: Settings, summary: TuneSummary) -> optuna.Study:
    return optuna.load_study(study_name=summary.study, storage=study_storage(settings)[0])


def _children(settings: Settings, parent: str) -> list[str]:
    client = tracking_client(settings)
    runs = client.search_runs([experiment_id(client)], f"tags.mlflow.parentRunId = '{parent}'")
    return sorted(run.data.params["trial"] for run in runs)


def test_given_a_tune_that_died_during_a_trial_when_started_again_then_it_resumes_to_n_trials_in_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = labelled_lake(tmp_path)
    first = _tune(settings, trials=2)
    # a process that died during its third trial: the next queued trial left RUNNING, its MLflow run too
    died = _study(settings, first).ask()
    client = tracking_client(settings)
    run_id = client.create_run(experiment_id(client), run_name=f"trial {died.number}").info.run_id
    died.set_user_attr(RUN_ATTR, run_id)
    capsys.readouterr()

    again = _tune(settings, trials=5)

    assert (again.study, again.resumed, again.trials) == (first.study, 2, 5)
    study = _study(settings, again)
    trials = study.get_trials()
    assert trials[died.number].state == TrialState.FAIL  # failed, and out of the budget:
    assert [t.number for t in finished_trials(study)] == [0, 1, 3, 4, 5]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == died.number]  # ... and run again
    assert retry.state == TrialState.COMPLETE and retry.params == trials[died.number].system_attrs["fixed_params"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert _children(settings, again.run_id) == ["3", "4", "5"]  # only the remaining trials ran
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"tune: study '{again.study}' in sqlite:///") and "2 of 5 trials finished" in lines[0]
    progress = [
        re.fullmatch(r"tune: trial (\d) complete, val AUC 0\.\d{4}; best 0\.\d{4} \(trial \d\); (\d) of 5", line)
        for line in lines[1:]
    ]
    assert [(m.group(1), m.group(2)) for m in progress if m] == [("3", "3"), ("4", "4"), ("5", "5")]


def test_given_the_same_inputs_twice_then_no_finished_trial_runs_again(tmp_path: Path) -> None:
    journal = tmp_path / "studies.log"  # CLICKSTREAM_TUNE_STORAGE: an Optuna journal file
    settings = dataclasses.replace(labelled_lake(tmp_path), tune_storage=str(journal))
    first = _tune(settings, trials=2)
    queued = len(_study(settings, first).get_trials())

    again = _tune(settings, trials=2)

    assert (again.study, again.resumed, again.trials) == (first.study, 2, 2)
    assert (again.best_val_auc, again.default_val_auc) == (first.best_val_auc, first.default_val_auc)
    assert len(_study(settings, again).get_trials()) == queued  # nothing new asked, nothing rerun
    assert _children(settings, again.run_id) == []
    assert isinstance(study_storage(settings)[0], JournalStorage) and journal.stat().st_size > 0
    assert not (settings.home / "optuna.db").exists()
    assert read_tuned(settings).val_auc == first.best_val_auc  # type: ignore[union-attr]


def test_given_another_window_then_a_fresh_study(tmp_path: Path) -> None:
    settings = labelled_lake(tmp_path)
    whole = _tune(settings, trials=1)

    shorter = _tune(settings, trials=1, end=dt.date(2014, 4, 3))

    assert shorter.study != whole.study and shorter.study.startswith("tune 2014-04-01..2014-04-03 ")
    assert (shorter.resumed, shorter.trials) == (0, 1)
    assert sorted(optuna.get_all_study_names(study_storage(settings)[0])) == sorted([whole.study, shorter.study])
    run = tracking_client(settings).get_run(shorter.run_id)
    assert run.data.tags[STUDY_TAG] == shorter.study


def test_given_an_sqlite_tracking_store_then_the_study_is_in_its_own_database_beside_it(settings: Settings) -> None:
    storage, where = study_storage(settings)
    assert isinstance(storage, RDBStorage)
    assert where == f"sqlite:///{settings.home / 'optuna.db'}" and (settings.home / "optuna.db").exists()


@pytest.mark.parametrize(("lake", "folder"), [("local", "lake/_config"), ("s3://bucket/lake", "state")])
def test_given_a_tracking_server_then_the_study_is_a_journal_file_with_the_lake_or_in_the_home(
    tmp_path: Path, lake: str, folder: str
) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    settings = load_settings(
        lake=str(tmp_path / "lake") if lake == "local" else lake, home=tmp_path / "state", environ=env
    )
    storage, where = study_storage(settings)
    assert isinstance(storage, JournalStorage) and where == str(tmp_path / folder / "tune-studies.log")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("postgresql+psycopg2://tuner:secret@127.0.0.1:9/mlflow", "Connection refused"),
        ("mysql://tuner:secret@127.0.0.1:9/mlflow", "its database driver MySQLdb is not installed"),
    ],
)
def test_given_a_database_that_cannot_be_opened_then_one_line_naming_it_without_its_password(
    tmp_path: Path, uri: str, reason: str
) -> None:
    settings = load_settings(lake=str(tmp_path / "lake"), home=tmp_path, environ={"MLFLOW_TRACKING_URI": uri})
    with pytest.raises(TrackingStoreError) as raised:
        study_storage(settings)
    message = str(raised.value)
    assert message.startswith("cannot open the tuning study store ") and "beside MLFLOW_TRACKING_URI" in message
    assert reason in message and "secret@" not in message and "tuner:" not in message and "\n" not in message


def test_given_a_day_added_after_the_run_began_then_the_window_is_the_one_it_began_with(settings: Settings) -> None:
    lake = Lake(settings.lake)
    write_sequences(lake, synthetic_sequences(sessions=400, days=3))
    began = lake.history("sequences")[0].timestamp
    write_sequences(lake, synthetic_sequences(sessions=100, days=1, start_date=dt.date(2014, 4, 4), seed=1))

    assert latest_window(settings, 30, as_of=began)[1] == dt.date(2014, 4, 3)  # a retry: the same window
    assert latest_window(settings, 30)[1] == dt.date(2014, 4, 4)  # a new run: the newest day
    with pytest.raises(NoDataError, match="sequences/ is empty"):
        latest_window(settings, 30, as_of=began - dt.timedelta(seconds=1))
