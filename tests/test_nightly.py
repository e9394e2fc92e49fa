"""The nightly steps as plain functions: which day a run covers, what counts as landing files,
when training and scoring have nothing to do, how failures are retried, and that a retried
training resumes where the failed attempt stopped."""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Imported at collection, before any test: Airflow's logging set-up, on its first import, replaces the
# root's handlers, caplog's among them
from airflow.sdk.exceptions import AirflowSkipException
from hypothesis import given
from hypothesis import strategies as st

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ClickstreamError, InputError, LakeConflictError, NoDataError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.orchestrate import nightly

DAY = dt.date(2014, 4, 7)


def _landing(settings: Settings, day: dt.date, *names: str) -> Path:
    folder = Path(settings.landing) / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("")
    return folder


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)), st.integers(-12, 14))
def test_given_an_interval_start_in_any_timezone_when_run_day_then_it_is_the_utc_date(moment, offset_hours):
    start = moment.replace(tzinfo=dt.timezone(dt.timedelta(hours=offset_hours)))
    assert nightly.run_day(start) == start.astimezone(dt.UTC).date()


@given(st.dates(min_value=dt.date(2001, 1, 1)), st.integers(1, 400))
def test_given_a_day_when_training_window_then_it_holds_window_days_ending_at_the_day(day, window_days):
    start, end = nightly.training_window(day, window_days)
    assert end == day
    assert (end - start).days + 1 == window_days


def test_given_yoochoose_landing_files_when_find_landing_then_clicks_and_buys_sorted_and_truth_ignored(settings):
    folder = _landing(settings, DAY, "yoochoose-clicks.dat", "yoochoose-buys.dat.gz", "truth.parquet", "b-clicks.dat")
    batch = nightly.find_landing(settings, DAY)
    assert batch == {
        "day": "2014-04-07",
        "format": "yoochoose",
        "files": [str(folder / "b-clicks.dat"), str(folder / "yoochoose-clicks.dat")],
        "buys": [str(folder / "yoochoose-buys.dat.gz")],
    }


def test_given_cookie_event_logs_when_find_landing_then_format_events(settings):
    folder = _landing(settings, DAY, "events.csv", "events-2.jsonl.gz", "truth.parquet")
    batch = nightly.find_landing(settings, DAY)
    assert batch["format"] == "events"
    assert batch["files"] == [str(folder / "events-2.jsonl.gz"), str(folder / "events.csv")]
    assert batch["buys"] == []


@pytest.mark.parametrize("names", [None, (), ("truth.parquet", "notes.txt")])
def test_given_no_landing_files_when_find_landing_then_no_data_names_the_day_and_folder(settings, names):
    if names is not None:
        _landing(settings, DAY, *names)
    with pytest.raises(NoDataError, match=r"no landing files for 2014-04-07 in .*2014-04-07"):
        nightly.find_landing(settings, DAY)


def test_given_a_landing_file_re_delivered_with_fewer_dates_then_the_next_build_rebuilds_the_dropped_dates(settings):
    folder = _landing(settings, DAY)
    lines = ["cookie_id,ts,event_type,item_id"]
    (folder / "events.csv").write_text("\n".join([*lines, *(f"c,2014-04-0{d}T10:00:00Z,view,i" for d in (3, 5, 7))]))
    first = nightly.ingest_landing(settings, nightly.find_landing(settings, DAY))
    nightly.rebuild_sequences(settings, DAY - dt.timedelta(days=4), DAY)
    (folder / "events.csv").write_text("\n".join([*lines, "c,2014-04-07T10:00:00Z,view,i"]))

    again = nightly.ingest_landing(settings, nightly.find_landing(settings, DAY))
    built = nightly.rebuild_sequences(settings, DAY, DAY, dropped=again["dropped"])

    assert (first["dropped"], again["dropped"]) == ([], ["2014-04-03", "2014-04-05"])  # plain values for XCom
    assert built["rebuilt"] == [["2014-04-02", "2014-04-06"]]  # each dropped date with the days around it
    assert Lake(settings.lake).dates("sequences") == [DAY]
    assert built["scores_cleared"] == [] and built["rescored"] == []


def test_given_too_few_sequence_days_when_train_for_day_then_no_data_says_how_many_are_needed(settings):
    from clickstream.pipeline.synthetic.sequences import synthetic_sequences, write_sequences

    lake = Lake(settings.lake)
    write_sequences(lake, synthetic_sequences(sessions=40, days=2, start_date=DAY - dt.timedelta(days=1)))
    assert lake.dates("sequences") == [DAY - dt.timedelta(days=1), DAY]
    need = settings.train.validation_days + 1
    assert need > 2
    with pytest.raises(NoDataError, match=rf"training needs {need} days .* found 2"):
        nightly.train_for_day(settings, DAY, window_days=30)


def test_given_no_champion_when_score_days_then_no_data_and_no_scores_written(settings):
    with pytest.raises(NoDataError, match="no champion model registered yet"):
        nightly.score_days(settings, DAY, DAY)
    assert Lake(settings.lake).dates("scores") == []


def test_given_a_fresh_state_when_training_and_scoring_skip_then_torch_is_not_imported(tmp_path):
    code = (
        "import datetime as dt, sys\n"
        "from clickstream.pipeline.core.config import load_settings\n"
        "from clickstream.pipeline.core.errors import NoDataError\n"
        "from clickstream.pipeline.orchestrate import nightly\n"
        f"settings = load_settings(lake={str(tmp_path / 'lake')!r}, home={str(tmp_path / 'home')!r}, environ={{}})\n"
        "for step in (lambda: nightly.train_for_day(settings, dt.date(2014, 4, 7), window_days=30),\n"
        "             lambda: nightly.score_days(settings, dt.date(2014, 4, 7), dt.date(2014, 4, 7))):\n"
        "    try:\n        step()\n    except NoDataError:\n        pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # a skipped Airflow task does not load torch


def test_given_a_range_when_backfill_dates_then_every_day_inclusive_ascending():
    assert nightly.backfill_dates("2014-04-30", "2014-05-02") == ["2014-04-30", "2014-05-01", "2014-05-02"]


@pytest.mark.parametrize(("start", "end"), [("2014-04-02", "2014-04-01"), ("2014-01-01", "2016-01-01"), ("x", "y")])
def test_given_a_reversed_long_or_malformed_range_when_backfill_dates_then_a_one_line_error(start, end):
    with pytest.raises(ClickstreamError, match="backfill"):
        nightly.backfill_dates(start, end)


def test_given_no_data_inside_when_skip_when_no_data_then_airflow_skip_with_the_reason_logged(caplog):
    with pytest.raises(AirflowSkipException, match="nothing to ingest"), nightly.skip_when_no_data():
        raise NoDataError("nothing to ingest")
    (record,) = [r for r in caplog.records if r.name == nightly.log.name]
    assert record.getMessage() == "skipped: nothing to ingest"  # what the task's log shows
    assert getattr(record, nightly.SKIP_REASON) == "nothing to ingest"  # what reads the reason back


def test_given_another_error_inside_when_skip_when_no_data_then_it_propagates_unchanged():
    with pytest.raises(InputError), nightly.skip_when_no_data():
        raise InputError("corrupt gzip")


@pytest.mark.parametrize(
    ("error", "action"),
    [(InputError("bad file"), "fail"), (LakeConflictError("busy"), "retry"), (OSError("disk"), "default")],
)
def test_given_an_error_when_the_retry_policy_decides_then_data_errors_fail_and_others_retry(error, action):
    policy = nightly.task_defaults()["retry_policy"]
    assert policy.evaluate(error, try_number=1, max_tries=4).action.value == action


def test_given_the_defaults_when_task_defaults_then_backoff_timeout_and_failure_callback_are_set():
    defaults = nightly.task_defaults()
    assert defaults["retries"] == nightly.NIGHTLY.retries > 0
    assert defaults["retry_exponential_backoff"] > 1
    assert defaults["execution_timeout"] == nightly.NIGHTLY.task_timeout
    assert defaults["on_failure_callback"] is nightly.log_task_failure


def test_given_a_failed_task_context_when_log_task_failure_then_one_line_names_dag_task_day_and_error(caplog):
    class TaskInstance:
        dag_id, task_id, try_number = "clickstream_nightly", "ingest", 2

    context = {
        "ti": TaskInstance(),
        "data_interval_start": dt.datetime(2014, 4, 7, tzinfo=dt.UTC),
        "exception": InputError("corrupt gzip\nin file x"),
    }
    with caplog.at_level(logging.ERROR, logger="clickstream.pipeline.orchestrate.nightly"):
        nightly.log_task_failure(context)
    (line,) = caplog.messages
    assert "dag=clickstream_nightly task=ingest day=2014-04-07 try=2 error=corrupt gzip in file x" in line


@pytest.mark.skipif(importlib.util.find_spec("kubernetes") is not None, reason="kubernetes client installed")
def test_given_no_kubernetes_client_when_gpu_executor_config_then_empty():
    assert nightly.gpu_executor_config(1) == {}


@pytest.mark.parametrize(
    ("dag_id", "task_id", "alert"),
    [
        (None, None, True),  # the DAG processor: the scheduler's DAGs keep their deadline
        ("clickstream_nightly", "train", True),  # a worker parsing for one task
        ("clickstream_nightly", None, False),  # `airflow dags test`: the whole DAG run in one process
    ],
)
def test_given_a_parsing_context_when_late_run_deadline_then_an_alert_unless_the_whole_dag_runs_in_process(
    dag_id, task_id, alert, monkeypatch
):
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID, _AIRFLOW_PARSING_CONTEXT_TASK_ID

    for name, value in ((_AIRFLOW_PARSING_CONTEXT_DAG_ID, dag_id), (_AIRFLOW_PARSING_CONTEXT_TASK_ID, task_id)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)  # as Airflow sets it while parsing
    deadline = nightly.late_run_deadline()
    assert (deadline is not None) == alert
    assert deadline is None or deadline.interval == nightly.NIGHTLY.late_after


def test_given_no_train_executor_then_the_train_task_uses_the_default_executor_else_the_named_one():
    default = nightly.train_task_options(nightly.NightlyConfig())
    assert "executor" not in default and (default["pool"], default["queue"]) == ("gpu", "gpu")
    assert default["execution_timeout"] == nightly.NIGHTLY.train_timeout

    kubernetes = nightly.train_task_options(nightly.NightlyConfig(train_executor="KubernetesExecutor"))
    assert kubernetes["executor"] == "KubernetesExecutor"
    assert kubernetes["executor_config"]["pod_template_file"].endswith("pod-template-train.yaml")
    celery = nightly.train_task_options(nightly.NightlyConfig(train_executor="CeleryExecutor"))
    assert celery["executor"] == "CeleryExecutor" and "pod_template_file" not in celery["executor_config"]


@pytest.mark.parametrize(("try_number", "retry"), [(None, False), (1, False), (2, True), (4, True)])
def test_given_a_task_instance_when_is_retry_then_true_only_after_the_first_try(try_number, retry):
    assert nightly.is_retry(SimpleNamespace(try_number=try_number)) is retry


@pytest.mark.slow
def test_given_a_training_killed_after_an_epoch_when_the_retry_resumes_then_it_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    from fixtures import labelled_lake

    from clickstream.models.registry.loading import load_model
    from clickstream.models.registry.store import tracking_client
    from clickstream.models.training import train as train_module

    day, window = dt.date(2014, 4, 4), 4
    whole, killed = (labelled_lake(tmp_path / name, sessions=1200, seed=4) for name in ("whole", "killed"))
    nightly.train_for_day(whole, day, window_days=window, device="cpu")
    log_epoch = train_module._log_epoch

    def killed_after_epoch_1(stats):
        log_epoch(stats)
        raise KeyboardInterrupt  # the worker dies after the epoch's checkpoint

    monkeypatch.setattr(train_module, "_log_epoch", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        nightly.train_for_day(killed, day, window_days=window, device="cpu")
    monkeypatch.setattr(train_module, "_log_epoch", log_epoch)
    assert Lake(killed.lake).fs.glob(f"{killed.checkpoints}/*/last.pt")  # in the lake, seen by every worker

    retried = nightly.is_retry(SimpleNamespace(try_number=2))
    trained = nightly.train_for_day(killed, day, window_days=window, device="cpu", resume=retried)

    expected, resumed = (
        load_model(s, f"models:/{s.model_name}/1", device="cpu").model.state_dict() for s in (whole, killed)
    )
    assert trained["version"] == "1" and expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    client = tracking_client(killed)
    (run,) = client.search_runs([client.get_experiment_by_name("clickstream").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_train_loss")] == [1, 2]
    assert not Lake(killed.lake).fs.glob(f"{killed.checkpoints}/*/last.pt")  # superseded by the version


class _LazyResults:
    """Like Airflow's lazy sequence of a mapped task's results: iterating it fails (it would ask the
    API for one past the end); length and indexing work."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def __iter__(self):
        raise AssertionError("iterated")


def test_given_mapped_results_then_they_are_read_by_index_and_summed_up():
    built = _LazyResults(
        [
            {"start": "2014-04-01", "end": "2014-04-02", "dates": ["2014-04-02"], "sessions": 3, "buyers": 1},
            {
                "start": "2014-04-01",
                "end": "2014-04-02",
                "dates": ["2014-04-01", "2014-04-02"],
                "sessions": 4,
                "buyers": 0,
            },
        ]
    )
    merged = nightly.merge_built(built)
    assert merged == {
        "start": "2014-04-01",
        "end": "2014-04-02",
        "dates": ["2014-04-01", "2014-04-02"],
        "sessions": 7,
        "buyers": 1,
        "buckets": 2,
    }
    assert nightly.dropped_dates(
        _LazyResults([{"dropped": ["2014-04-03"]}, {"dropped": ["2014-04-01", "2014-04-03"]}])
    ) == [
        "2014-04-01",
        "2014-04-03",
    ]
    assert nightly.sessions_scored(_LazyResults([{"sessions": 2}, {"sessions": 5}])) == 7
    with pytest.raises(NoDataError):
        nightly.merge_built(_LazyResults([]))


def test_given_landing_files_then_one_batch_per_log_file_unless_buys_complete_the_clicks():
    cookie_logs = {"day": "2014-04-01", "format": "events", "files": ["a.csv", "b.csv"], "buys": []}
    assert [b["files"] for b in nightly.landing_batches(cookie_logs)] == [["a.csv"], ["b.csv"]]
    yoochoose = {"day": "2014-04-01", "format": "yoochoose", "files": ["c1.dat", "c2.dat"], "buys": ["b.dat"]}
    assert nightly.landing_batches(yoochoose) == [yoochoose]
