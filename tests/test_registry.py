"""The champion gate: the first model becomes champion, a worse or equal one never
replaces it, an unloadable champion is replaced, and every decision is tagged."""

from __future__ import annotations

import dataclasses
import math
import socket
from pathlib import Path

import mlflow
import pytest
from fixtures import labelled_lake

from clickstream.models.promotion import promote_if_better
from clickstream.models.registry import alias_version, redacted, tracking_client
from clickstream.models.train import TrainSummary, train_challenger
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ModelNotFoundError, TrackingStoreError

NAME = "clickstream-buy-intent"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainSummary]:
    settings = labelled_lake(tmp_path_factory.mktemp("registry"), sessions=2400, epochs=3)
    summary = train_challenger(settings, None, None, device="cpu")
    promote_if_better(settings, summary.version)
    return settings, summary


def test_given_no_champion_when_the_first_challenger_is_gated_then_it_becomes_champion_with_tags(
    champion: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = champion
    tags = tracking_client(settings).get_model_version(NAME, summary.version).tags

    assert alias_version(settings, "champion") == summary.version
    assert tags["promotion_decision"] == "promoted" and tags["promotion_reason"] == "there was no champion"
    assert float(tags["challenger_val_auc"]) == pytest.approx(summary.val_auc, abs=1e-6)
    assert tags["champion_version_before"] == "none" and tags["promotion_window"] == "2014-04-03..2014-04-04"


def test_given_an_untrained_model_when_gated_then_it_never_replaces_the_champion_and_both_scores_are_tags(
    champion: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = champion
    untrained = dataclasses.replace(settings, train=dataclasses.replace(settings.train, learning_rate=0.0))
    worse = train_challenger(untrained, None, None, device="cpu")

    decision = promote_if_better(settings, worse.version)

    assert not decision.promoted and alias_version(settings, "champion") == summary.version
    assert decision.champion_version == summary.version and decision.challenger_auc < decision.champion_auc
    tags = tracking_client(settings).get_model_version(NAME, worse.version).tags
    assert tags["promotion_decision"] == "rejected"
    assert float(tags["challenger_val_auc"]) == pytest.approx(decision.challenger_auc, abs=1e-6)
    assert float(tags["champion_val_auc"]) == pytest.approx(decision.champion_auc, abs=1e-6)
    assert "does not beat" in str(decision) and "\n" not in str(decision)


def test_given_a_challenger_equal_to_the_champion_when_gated_then_a_tie_keeps_the_champion(
    champion: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = champion
    client = tracking_client(settings)
    twin = mlflow.register_model(client.get_model_version(NAME, summary.version).source, NAME)

    decision = promote_if_better(settings, str(twin.version), *summary.validation)

    assert not decision.promoted and decision.challenger_auc == decision.champion_auc
    assert alias_version(settings, "champion") == summary.version


def test_given_the_champion_itself_when_gated_again_then_nothing_changes(
    champion: tuple[Settings, TrainSummary],
) -> None:
    settings, summary = champion

    decision = promote_if_better(settings, summary.version)

    assert not decision.promoted and decision.reason == "it already is the champion"
    assert alias_version(settings, "champion") == summary.version


@pytest.mark.slow
def test_given_a_champion_that_cannot_be_loaded_when_gated_then_the_challenger_replaces_it_and_says_why(
    tmp_path: Path,
) -> None:
    settings = labelled_lake(tmp_path, sessions=1200, seed=2)
    client = tracking_client(settings)
    client.create_registered_model(NAME)
    broken = client.create_model_version(NAME, source=(tmp_path / "gone").as_uri())
    client.set_registered_model_alias(NAME, "champion", broken.version)
    challenger = train_challenger(settings, None, None, device="cpu")

    decision = promote_if_better(settings, challenger.version)

    assert decision.promoted and "could not be loaded" in decision.reason and math.isnan(decision.champion_auc)
    assert alias_version(settings, "champion") == challenger.version


def test_given_an_unknown_version_when_gated_then_model_not_found_in_one_line(
    champion: tuple[Settings, TrainSummary],
) -> None:
    settings, _ = champion

    with pytest.raises(ModelNotFoundError, match="no version 99") as error:
        promote_if_better(settings, "99")
    assert "\n" not in str(error.value)


def test_given_a_tracking_uri_with_credentials_then_messages_show_it_without_them() -> None:
    assert redacted("postgresql://user:secret@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert redacted("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_given_a_tracking_server_that_is_not_there_then_one_line_naming_it_without_credentials(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    nowhere = dataclasses.replace(settings, tracking_uri=f"http://user:secret@127.0.0.1:{port}")

    reachable = f"cannot reach the MLflow tracking store http://127.0.0.1:{port}"
    with pytest.raises(TrackingStoreError, match=reachable) as error:
        tracking_client(nowhere)
    assert "\n" not in str(error.value) and "secret" not in str(error.value)
