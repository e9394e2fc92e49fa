"""The registry's history is one transaction with the `champion` alias, replayed
with real processes where the probes used them: a `promote` SIGKILLed right after the alias moved
(or just before), re-run, listed and rolled back; `rollback` and `promote 1` deciding at once; two
trainings of one window at once; processes opening a fresh SQLite store at once. The hooks that kill
or hold a child live in the child only (as tests/killpoints.py does for lake commits)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import labelled_lake
from mlflow.entities import Param

from clickstream.models.registry import store as registry_store
from clickstream.models.registry.champion import decision_history, promote_version, rollback_champion
from clickstream.models.registry.decision import Action, Decision, recorded_champion
from clickstream.models.registry.store import (
    CLAIM_EXPIRY,
    CLAIM_PREFIX,
    DECISIONS_EXPERIMENT,
    FINGERPRINT_TAG,
    DecisionBusyError,
    alias_version,
    tracking_client,
)
from clickstream.models.training import train
from clickstream.pipeline.core.config import Settings, load_settings
from clickstream.pipeline.core.errors import PromotionError
from clickstream.pipeline.core.processes import owner
from clickstream.pipeline.serve.history import write_registry

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
NAME = "clickstream-buy-intent"
DEADLINE_S = 300

_CHILD = r"""
import json, os, signal, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["tests"])
hook = spec.get("hook")


def say(word):
    print(word, flush=True)


if hook in ("kill_after_alias", "kill_before_alias"):  # the `champion` alias's move, in this process only
    from mlflow import MlflowClient
    real_alias = MlflowClient.set_registered_model_alias

    def moved(self, name, alias, version):
        if alias == "champion" and hook == "kill_before_alias":
            say("KILLED")
            os.kill(os.getpid(), signal.SIGKILL)
        real_alias(self, name, alias, version)
        if alias == "champion":
            say("KILLED")
            os.kill(os.getpid(), signal.SIGKILL)

    MlflowClient.set_registered_model_alias = moved
elif hook == "hold_decided":  # the decision taken, not yet recorded: wait for the test
    from clickstream.models.registry import champion
    real_record, calls = champion.record_decision, []

    def held(*args, **kwargs):
        if not calls:
            calls.append(1)
            say("DECIDED")
            sys.stdin.readline()
        return real_record(*args, **kwargs)

    champion.record_decision = held
elif hook == "hold_training":  # inside the training run, before the first epoch: wait for the test
    from clickstream.models.training import train
    real_fit = train.fit_ranks

    def held(*args, **kwargs):
        say("TRAINING")
        sys.stdin.readline()
        return real_fit(*args, **kwargs)

    train.fit_ranks = held

if "train" in spec:
    from fixtures import tiny_settings
    from clickstream.models.training.train import train_and_register
    from clickstream.pipeline.core.config import load_settings

    settings = tiny_settings(load_settings(lake=spec["lake"], home=spec["home"], environ={}), epochs=1)
    print(train_and_register(settings, None, None, device="cpu", promote=True), flush=True)
elif "open" in spec:
    from clickstream.models.registry.store import tracking_client
    from clickstream.pipeline.core.config import load_settings

    settings = load_settings(lake=spec["lake"], home=spec["home"], environ={})
    say("READY")
    sys.stdin.readline()
    tracking_client(settings).search_registered_models()
    say("OPENED")
else:
    from clickstream.pipeline.orchestrate.cli import main

    sys.argv = ["clickstream", *spec["argv"]]
    main()
"""


def _environ(settings: Settings) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "CLICKSTREAM"))}
    paths = {"CLICKSTREAM_HOME": str(settings.home), "CLICKSTREAM_LAKE": settings.lake, "PYTHONPATH": str(REPO)}
    return environ | paths


def _command(settings: Settings, **spec: object) -> list[str]:
    document = {"tests": str(TESTS), "lake": settings.lake, "home": str(settings.home), **spec}
    return [sys.executable, "-c", _CHILD, json.dumps(document)]


def child(settings: Settings, *argv: str, hook: str | None = None) -> subprocess.CompletedProcess[str]:
    """`clickstream ARGV` in a fresh process, with `hook` installed in that process only."""
    return subprocess.run(
        _command(settings, argv=list(argv), hook=hook),
        env=_environ(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


@contextlib.contextmanager
def started(settings: Settings, **spec: object) -> Iterator[subprocess.Popen[str]]:
    """A child running `spec` with pipes; killed (if still running) and reaped on exit."""
    process = subprocess.Popen(
        _command(settings, **spec),
        env=_environ(settings),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=DEADLINE_S)


def expect_line(stream: object, word: str) -> None:
    """Read `stream` until a line holding `word`; fails at the end of the stream."""
    seen = []
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        seen.append(line)
        if word in line:
            return
    raise AssertionError(f"{word!r} never came: {''.join(seen)[-3000:]}")


def go(process: subprocess.Popen[str]) -> None:
    """Let a held child go on."""
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=DEADLINE_S)
    return process.returncode, out, err


def release(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Let a held child go on and wait for its end."""
    go(process)
    return finished(process)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def decision_runs(settings: Settings) -> dict[str, str]:
    """Every decision record, whatever its status: run id -> status."""
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    return {run.info.run_id: run.info.status for run in client.search_runs([experiment.experiment_id])}


def assert_agree(settings: Settings) -> None:
    """The alias and the history's chain of champions name the same version, and nothing is left RUNNING."""
    assert alias_version(settings, "champion") == recorded_champion(decision_history(settings))
    assert "RUNNING" not in decision_runs(settings).values()


def claims(settings: Settings) -> dict[str, str]:
    tags = tracking_client(settings).get_registered_model(NAME).tags
    return {key: value for key, value in tags.items() if key.startswith(CLAIM_PREFIX)}


@pytest.fixture(scope="module")
def template(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of champion_home's store (v1 champion, history [promoted v1]) with v2 and v3 registered
    from v1's model (same files, same feature schema): versions to decide on without training."""
    folder = tmp_path_factory.mktemp("registry-template")
    _copy_store(champion_home / "mlflow.db", folder / "mlflow.db")
    settings = load_settings(lake=str(folder / "lake"), home=folder, environ={})
    client = tracking_client(settings)
    first = client.get_model_version(NAME, "1")
    tags = {key: value for key, value in first.tags.items() if key != FINGERPRINT_TAG}
    for _ in range(2):
        client.create_model_version(NAME, first.source, run_id=first.run_id, tags=tags)
    assert alias_version(settings, "champion") == "1" and len(decision_history(settings)) == 1
    return folder / "mlflow.db"


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Settings:
    """A private copy of `template`: v1 champion, v2 and v3 registered, history [promoted v1]."""
    home = tmp_path / "state"
    home.mkdir()
    _copy_store(template, home / "mlflow.db")
    return load_settings(lake=str(tmp_path / "lake"), home=home, environ={})


def _copy_store(source: Path, target: Path) -> None:
    with contextlib.closing(sqlite3.connect(source)) as old, contextlib.closing(sqlite3.connect(target)) as new:
        old.backup(new)


def test_given_promote_killed_right_after_the_alias_moved_then_models_settles_it_and_rollback_is_not_refused(
    store: Settings,
) -> None:
    killed = child(store, "promote", "2", "--reason", "probe", hook="kill_after_alias")
    assert killed.returncode == -signal.SIGKILL and killed.stdout.strip() == "KILLED", killed.stderr[-2000:]
    assert alias_version(store, "champion") == "2"  # the probe's instant: the alias moved,
    raw = decision_runs(store)
    assert sorted(raw.values()) == ["FINISHED", "RUNNING"]  # its record not finished

    listed = child(store, "models", "--format", "json")
    rolled = child(store, "rollback", "--reason", "after the kill")

    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert [(d["action"], d["champion_after"]) for d in document["decisions"]] == [
        ("promoted", "1"),
        ("manual-promote", "2"),
    ]
    assert [v["version"] for v in document["versions"] if "champion" in v["aliases"]] == ["2"]
    assert "outside clickstream" not in listed.stderr
    assert rolled.returncode == 0, rolled.stderr
    assert "v1 restored as champion: rolled back from v2" in rolled.stdout
    assert alias_version(store, "champion") == "1"
    assert_agree(store)
    assert claims(store) == {}  # the killed process's claim was taken as abandoned and removed


def test_given_promote_killed_right_after_the_alias_moved_when_promote_is_run_again_then_it_heals(
    store: Settings,
) -> None:
    killed = child(store, "promote", "2", "--reason", "probe", hook="kill_after_alias")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    again = child(store, "promote", "2", "--reason", "probe again")

    assert again.returncode == 0, again.stderr
    history = decision_history(store)
    assert [d.action for d in history] == [Action.PROMOTED, Action.MANUAL, Action.NO_OP]
    assert_agree(store)
    assert rollback_champion(store, "back", decided_by="test").challenger_version == "1"
    assert_agree(store)


def test_given_promote_killed_just_before_the_alias_moved_then_its_record_fails_and_the_champion_stays(
    store: Settings,
) -> None:
    killed = child(store, "promote", "2", "--reason", "probe", hook="kill_before_alias")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (orphan,) = [run for run, status in decision_runs(store).items() if status == "RUNNING"]

    history = decision_history(store)

    assert [d.action for d in history] == [Action.PROMOTED] and alias_version(store, "champion") == "1"
    run = tracking_client(store).get_run(orphan)
    assert run.info.status == "FAILED" and "before the champion alias moved" in run.data.tags["failure_reason"]
    assert promote_version(store, "2", "now for real", decided_by="test").action is Action.MANUAL
    assert_agree(store)


def test_given_a_record_an_earlier_clickstream_left_running_then_models_explains_and_promote_heals(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe's state as the code before this fix left it: champion v2 moved, its record RUNNING
    without the tags a settlement reads."""
    client = tracking_client(store)
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT).experiment_id
    lost = Decision(
        dt.datetime.now(dt.UTC), "cli:promote (old)", Action.MANUAL, "2", float("nan"), "1", float("nan"),
        float("nan"), "probe", None, None, 0,
    )
    run = client.create_run(experiment, run_name="manual-promote")
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in lost.to_record().items()])
    client.set_registered_model_alias(NAME, "champion", "2")

    summary = write_registry(store, "json")
    with pytest.raises(PromotionError, match="record it with `clickstream promote 2") as refused:
        rollback_champion(store, "back", decided_by="test")
    healed = promote_version(store, "2", "record the lost promotion", decided_by="test")
    restored = rollback_champion(store, "back", decided_by="test")

    assert summary == "" and "the alias was set outside clickstream" in capsys.readouterr().err
    assert "\n" not in str(refused.value)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert healed.action is Action.MANUAL and "records v2, already behind the alias" in healed.reason
    assert restored.challenger_version == "1" and alias_version(store, "champion") == "1"
    assert_agree(store)


def test_given_rollback_and_promote_1_deciding_at_once_then_the_later_decides_again_and_alias_and_history_agree(
    store: Settings,
) -> None:
    promote_version(store, "2", "so that there is something to roll back", decided_by="test")

    with (
        started(store, argv=["promote", "1", "--reason", "by hand"], hook="hold_decided") as promote,
        started(store, argv=["rollback", "--reason", "at the same time"], hook="hold_decided") as rollback,
    ):
        expect_line(promote.stdout, "DECIDED")  # both decided on champion v2, history [v1, v2]
        expect_line(rollback.stdout, "DECIDED")
        promoted = release(promote)
        rolled = release(rollback)

    assert promoted[0] == 0 and "v1 promoted to champion by hand" in promoted[1], promoted[2]
    assert rolled[0] == 0, rolled[2]
    assert "v2 restored as champion: rolled back from v1" in rolled[1]  # taken again on champion v1
    history = decision_history(store)
    assert [d.action for d in history[-2:]] == [Action.MANUAL, Action.ROLLBACK]
    assert alias_version(store, "champion") == "2"
    assert_agree(store)


def test_given_a_live_claim_then_a_decision_fails_in_one_line_and_an_expired_or_dead_one_is_taken_over(
    store: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_store, "CLAIM_WAIT_S", 0.0)
    client = tracking_client(store)
    now = dt.datetime.now(dt.UTC)

    def claim(holder: str, since: dt.datetime) -> None:
        value = {"owner": holder, "since": since.isoformat(), "purpose": "x", "by": "cli:rollback (ana@elsewhere)"}
        client.set_registered_model_tag(NAME, f"{CLAIM_PREFIX}other", json.dumps(value))

    claim("elsewhere:4242", now)
    before = decision_runs(store)
    with pytest.raises(DecisionBusyError, match=r"claimed by another process \(cli:rollback") as busy:
        promote_version(store, "2", "blocked", decided_by="test")
    assert "\n" not in str(busy.value) and "elsewhere:4242" in str(busy.value)
    assert decision_runs(store) == before and alias_version(store, "champion") == "1"

    claim("elsewhere:4242", now - CLAIM_EXPIRY)  # expired
    assert promote_version(store, "2", "expired claim", decided_by="test").action is Action.MANUAL
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim(f"{owner().rpartition(':')[0]}:{dead.stdout.strip()}", dt.datetime.now(dt.UTC))  # its process is gone
    assert promote_version(store, "3", "dead claim", decided_by="test").action is Action.MANUAL
    assert claims(store) == {} and alias_version(store, "champion") == "3"
    assert_agree(store)


def test_given_another_claim_written_between_mine_and_my_read_back_then_mine_is_not_taken() -> None:
    """The compare-and-set: a claimant goes on only when its read-back sees no other live claim."""
    tags: dict[str, str] = {}
    rival = json.dumps({"owner": "elsewhere:1", "since": dt.datetime.now(dt.UTC).isoformat()})

    def write(key: str, value: str) -> None:
        tags[key] = value
        tags[f"{CLAIM_PREFIX}rival"] = rival  # the rival's write lands before my read

    board = registry_store._Board(lambda: dict(tags), write, lambda key: tags.pop(key, None))

    with pytest.raises(registry_store.ClaimedError, match="elsewhere:1"):
        registry_store._acquire(board, "the test's decision", "me", wait_s=0.0)
    assert list(tags) == [f"{CLAIM_PREFIX}rival"]  # mine was taken back


@pytest.mark.slow
def test_given_two_trainings_of_one_window_at_once_then_one_version_one_run_and_the_second_reuses_it(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=1200, days=4)

    with started(settings, train=True, hook="hold_training") as first:
        expect_line(first.stdout, "TRAINING")  # its run is started: the window is being trained
        with started(settings, train=True) as second:
            expect_line(second.stderr, "which trains the same window")
            trained = release(first)
            reused = second.communicate(timeout=DEADLINE_S)

    assert trained[0] == 0 and "registered as challenger" in trained[1], trained[2][-3000:]
    assert second.returncode == 0 and "v1 re-used" in reused[0], reused[1][-3000:]
    client = tracking_client(settings)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [v.version for v in versions] == [1]
    runs = client.search_runs([client.get_experiment_by_name("clickstream").experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"] and "heartbeat" in runs[0].data.tags
    assert sorted(d.action for d in decision_history(settings)) == sorted([Action.PROMOTED, Action.NO_OP])
    assert_agree(settings)


def test_given_running_runs_of_the_window_on_another_host_then_only_those_alive_by_their_heartbeat_are_waited_for(
    settings: Settings,
) -> None:
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name("clickstream").experiment_id
    now = dt.datetime.now(dt.UTC)

    def running(beat: dt.datetime | None) -> str:
        tags = {FINGERPRINT_TAG: "f" * 64, train.OWNER_TAG: "elsewhere:4242"}
        if beat is not None:
            tags[train.HEARTBEAT_TAG] = beat.isoformat()
        return client.create_run(experiment, tags=tags).info.run_id

    alive, dead, unmarked = running(now), running(now - train.HEARTBEAT_EXPIRY), running(None)

    assert {run.info.run_id for run in train._live_runs(client, "f" * 64)} == {alive, unmarked}
    assert train._end_abandoned_runs(client, "f" * 64, resume=True) == (dead, True)  # a retry on this host resumes it
    assert client.get_run(alive).info.status == client.get_run(unmarked).info.status == "RUNNING"


def test_given_a_fresh_sqlite_store_when_processes_open_it_at_once_then_every_one_opens_it(tmp_path: Path) -> None:
    settings = load_settings(lake=str(tmp_path / "lake"), home=tmp_path / "state", environ={})

    with contextlib.ExitStack() as stack:
        children = [stack.enter_context(started(settings, open=True)) for _ in range(4)]
        for process in children:
            expect_line(process.stdout, "READY")  # imported, the store not yet touched
        for process in children:  # all at once
            go(process)
        done = [finished(process) for process in children]

    assert [code for code, _, _ in done] == [0] * 4, "\n".join(err[-1500:] for _, _, err in done)
    assert all("OPENED" in out for _, out, _ in done)
    assert not any("Online migration" in err or "Traceback" in err for _, _, err in done)
    client = tracking_client(settings)
    assert [e.name for e in client.search_experiments()].count("clickstream") == 1


def test_given_a_decision_when_recorded_then_its_record_says_where_it_leads_and_it_started_after_the_last(
    store: Settings,
) -> None:
    first = decision_history(store)[-1]
    decision = promote_version(store, "2", "checked", decided_by="test")

    client = tracking_client(store)
    run = client.get_run(decision.decision_id)
    last = client.get_run(first.decision_id)
    assert run.data.tags[registry_store.CHAMPION_AFTER_TAG] == "2"
    assert int(run.data.tags[registry_store.FIELDS_TAG]) == len(run.data.params) == len(decision.to_record())
    assert run.info.start_time > last.info.start_time
