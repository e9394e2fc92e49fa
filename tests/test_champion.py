"""The champion's moves on a real MLflow SQLite store: every decision is a new record that nothing
rewrites, an unloadable champion stops the gate, and promote/rollback go through the history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from fixtures import labelled_lake

from clickstream.models.registry.champion import decision_history, gate_challenger, promote_version, rollback_champion
from clickstream.models.registry.decision import Action
from clickstream.models.registry.store import (
    DECISIONS_EXPERIMENT,
    FEATURE_SCHEMA_TAG,
    alias_version,
    tracking_client,
)
from clickstream.models.training.train import train_and_register, train_challenger
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import PromotionError
from clickstream.pipeline.orchestrate import nightly

NAME = "clickstream-buy-intent"


def records(settings: Settings) -> dict[str, bytes]:
    """Every decision run, whatever its status, as the bytes of its full MLflow record."""
    client = tracking_client(settings)
    experiment = client.get_experiment_by_name(DECISIONS_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return {run.info.run_id: json.dumps(run.to_dictionary(), sort_keys=True).encode() for run in runs}


def assert_kept(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    assert {run_id: after.get(run_id) for run_id in before} == before


def worse(settings: Settings) -> Settings:
    """Settings whose training cannot learn (learning rate 0): a bad challenger."""
    return dataclasses.replace(settings, train=dataclasses.replace(settings.train, learning_rate=0.0))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """v1 trained and promoted with `train --promote`'s path; tests add versions and decisions."""
    settings = labelled_lake(tmp_path_factory.mktemp("champion"), sessions=1600, epochs=2)
    train_and_register(settings, None, None, device="cpu", promote=True)
    return settings


def test_given_a_champion_when_the_same_train_promote_runs_again_then_a_no_op_is_added_and_nothing_rewritten(
    store: Settings,
) -> None:
    before = records(store)

    again = train_and_register(store, None, None, device="cpu", promote=True)

    assert again.reused and again.promotion is not None and again.promotion.action is Action.NO_OP
    assert alias_version(store, "champion") == again.version == "1"
    after = records(store)
    assert_kept(before, after)
    assert len(after) == len(before) + 1
    first = decision_history(store)[0]
    assert (first.action, first.challenger_version, first.reason) == (Action.PROMOTED, "1", "there was no champion")
    assert "unchanged: it already is the champion" in str(again)


def test_given_a_bad_challenger_when_gated_twice_then_two_rejections_and_the_first_is_untouched(
    store: Settings,
) -> None:
    bad = train_challenger(worse(store), None, None, device="cpu")
    before = records(store)

    first = gate_challenger(store, bad.version, decided_by="test")
    kept = records(store)
    second = gate_challenger(store, bad.version, decided_by="test")

    assert first.action is second.action is Action.REJECTED and alias_version(store, "champion") == "1"
    assert first.challenger_auc < first.champion_auc and first.champion_version == "1"
    assert first.decision_id != second.decision_id
    assert_kept(before, kept)
    assert_kept(kept, records(store))


def test_given_a_margin_when_a_better_version_is_gated_then_promoted_only_above_it(store: Settings) -> None:
    bad = train_challenger(worse(store), None, None, device="cpu").version  # re-used from the test above if run
    promote_version(store, bad, "make v1 the challenger for this test", decided_by="test")
    gain = gate_challenger(store, "1", decided_by="probe")
    assert gain.action is Action.PROMOTED  # margin 0.002 < v1's gain over the untrained model
    rollback_champion(store, "back to the untrained one", decided_by="test")
    strict = dataclasses.replace(store, promotion_margin=gain.challenger_auc - gain.champion_auc)

    held = gate_challenger(strict, "1", decided_by="test")

    assert held.action is Action.REJECTED and held.margin == strict.promotion_margin
    assert alias_version(store, "champion") == bad
    promote_version(store, "1", "restore v1 for the next tests", decided_by="test")


def test_given_a_manual_promotion_when_rolled_back_then_the_champion_returns_and_both_are_in_the_history(
    store: Settings,
) -> None:
    bad = train_challenger(worse(store), None, None, device="cpu").version
    champion = alias_version(store, "champion")
    before = records(store)

    promoted = promote_version(store, bad, "try the new one on real traffic", decided_by="cli:promote (ana@laptop)")
    assert alias_version(store, "champion") == bad and promoted.action is Action.MANUAL
    restored = rollback_champion(store, "scores looked wrong", decided_by="cli:rollback (ana@laptop)")

    assert alias_version(store, "champion") == champion
    assert (restored.action, restored.challenger_version, restored.champion_version) == (Action.ROLLBACK, champion, bad)
    history = decision_history(store)
    assert [d.decision_id for d in history[-2:]] == [promoted.decision_id, restored.decision_id]
    assert history[-1].reason == f"rolled back from v{bad}: scores looked wrong"
    assert_kept(before, records(store))


def test_given_an_unloadable_version_or_another_feature_schema_when_promoted_by_hand_then_refused(
    store: Settings, tmp_path: Path
) -> None:
    client = tracking_client(store)
    gone = client.create_model_version(NAME, source=(tmp_path / "gone").as_uri())
    source = client.get_model_version(NAME, "1").source
    other = mlflow.register_model(source, NAME, tags={FEATURE_SCHEMA_TAG: "0123456789abcdef"})
    champion, before = alias_version(store, "champion"), records(store)

    with pytest.raises(PromotionError, match=f"v{gone.version} cannot be loaded") as error:
        promote_version(store, str(gone.version), "why not", decided_by="test")
    with pytest.raises(PromotionError, match="trained on feature schema 0123456789abcdef, this code builds"):
        promote_version(store, str(other.version), "why not", decided_by="test")

    assert "\n" not in str(error.value)
    assert alias_version(store, "champion") == champion and records(store) == before


def test_given_the_cli_when_models_is_listed_as_json_and_a_bad_promote_is_asked_then_history_and_one_line(
    store: Settings,
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "CLICKSTREAM"))}
    environ |= {"CLICKSTREAM_HOME": str(store.home), "CLICKSTREAM_LAKE": store.lake}
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], env=environ, capture_output=True, text=True)

    listed = cli("models", "--format", "json")
    refused = cli("promote", "999", "--reason", "typo")

    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert [d["decision_id"] for d in document["decisions"]] == [d.decision_id for d in decision_history(store)]
    assert document["decisions"][0]["action"] == "promoted"
    champion = alias_version(store, "champion")
    assert [v["aliases"] for v in document["versions"] if v["version"] == champion] == [["champion"]]
    assert refused.returncode == 2 and refused.stderr.startswith("error: no version 999")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_given_nightly_days_when_they_run_again_then_every_earlier_decision_is_byte_identical(tmp_path: Path) -> None:
    settings = labelled_lake(tmp_path, sessions=1600, days=4, epochs=2)
    days = [dt.date(2014, 4, 3), dt.date(2014, 4, 4)]

    def night(day: dt.date) -> dict:
        return nightly.promote_challenger(settings, nightly.train_for_day(settings, day, window_days=30))

    first = [night(day) for day in days]
    before, champion = records(settings), alias_version(settings, "champion")
    again = [night(day) for day in days]

    assert first[0]["action"] == "promoted" and again[-1]["action"] in {"no-op", "rejected"}
    assert_kept(before, records(settings))
    assert len(records(settings)) == len(before) + 2
    assert alias_version(settings, "champion") == decision_history(settings)[-1].champion_after
    assert champion == first[-1]["champion"]
    assert all(d.decided_by.startswith("nightly (") for d in decision_history(settings))


def test_given_an_unloadable_champion_and_a_bad_challenger_when_gated_then_the_champion_stays_and_one_line(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=1200, seed=2, epochs=1)
    train_and_register(settings, None, None, device="cpu", promote=True)
    client = tracking_client(settings)
    shutil.rmtree(Path(client.get_model_version_download_uri(NAME, "1").removeprefix("file://")))
    bad = train_challenger(worse(settings), None, None, device="cpu")
    before = records(settings)

    with pytest.raises(PromotionError, match="champion v1 cannot be loaded") as error:
        nightly.promote_challenger(settings, {"version": bad.version})
    with pytest.raises(PromotionError, match="v1 stays champion, v2 stays challenger"):
        train_and_register(worse(settings), None, None, device="cpu", promote=True)

    assert "\n" not in str(error.value)
    assert alias_version(settings, "champion") == "1" and alias_version(settings, "challenger") == bad.version
    assert records(settings) == before
