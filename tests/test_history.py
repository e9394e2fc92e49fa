"""`clickstream models` on a real MLflow SQLite store: aliases as lists, the training window and the
validation days under their own names, and the champion's validation AUCs in the listing, whichever
experiment the run that trained a version belongs to."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from clickstream.models.registry.decision import Action, Decision
from clickstream.models.registry.store import (
    VAL_END_TAG,
    VAL_START_TAG,
    WINDOW_TAG,
    decision_log,
    experiment_id,
    record_decision,
    set_challenger,
    tracking_client,
)
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.serve.history import VERSIONS, model_versions, write_registry

NOW = dt.datetime(2014, 4, 11, 3, 0, tzinfo=dt.UTC)
TAGS = {WINDOW_TAG: "2014-04-01..2014-04-10", VAL_START_TAG: "2014-04-09", VAL_END_TAG: "2014-04-10"}


def register(settings: Settings, experiment: str, metrics: dict[str, float], tags: dict[str, str]) -> str:
    """A version of settings.model_name whose training run (in `experiment`) logged `metrics`."""
    client = tracking_client(settings)
    run = client.create_run(experiment_id(client, settings, experiment)).info.run_id
    for key, value in metrics.items():
        client.log_metric(run, key, value)
    client.set_terminated(run, "FINISHED")
    source = (settings.home / "models" / run).as_uri()
    return str(client.create_model_version(settings.model_name, source, run_id=run, tags=tags).version)


@pytest.fixture
def registry(settings: Settings) -> Settings:
    """v1 (champion, promoted by the gate) and v2 (challenger, its run kept in another experiment)."""
    tracking_client(settings).create_registered_model(settings.model_name)
    first = register(settings, "clickstream", {"val_auc": 0.81, "gbm_val_auc": 0.79}, TAGS)
    days = dt.date(2014, 4, 9), dt.date(2014, 4, 10)
    gate = Decision(NOW, "test", Action.PROMOTED, first, 0.81, None, math.nan, 0.002, "no champion", *days, 500)
    record_decision(settings, gate.to_record(), champion_after=first, moves=True, basis=decision_log(settings))
    second = register(settings, "elsewhere", {"val_auc": 0.83}, {WINDOW_TAG: "2014-04-02..2014-04-11"})
    set_challenger(settings, second)
    return settings


def test_given_versions_when_listed_as_json_then_aliases_are_lists_and_each_window_is_named_for_what_it_is(
    registry: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert write_registry(registry, "json") == ""

    out, err = capsys.readouterr()
    document = json.loads(out)
    first, second = document["versions"]
    assert (first["aliases"], second["aliases"]) == (["champion"], ["challenger"])
    assert (first["train_start"], first["train_end"]) == ("2014-04-01", "2014-04-10")
    assert (first["validation_start"], first["validation_end"]) == ("2014-04-09", "2014-04-10")
    assert first["trained_through"] == "2014-04-10"
    assert (second["train_start"], second["validation_start"], second["val_auc"]) == ("2014-04-02", None, 0.83)
    (decision,) = document["decisions"]
    assert (decision["validation_start"], decision["validation_end"]) == ("2014-04-09", "2014-04-10")
    assert not any("window" in record for record in [first, second, decision])
    assert document["champion"] == {
        "version": "1",
        "val_auc": 0.81,
        "gbm_val_auc": 0.79,
        "validation_start": "2014-04-09",
        "validation_end": "2014-04-10",
    }
    assert "champion v1 (validation AUC LSTM 0.8100, GBM 0.7900 on 2014-04-09..2014-04-10)" in err


def test_given_two_aliases_on_one_version_when_listed_as_a_table_then_one_cell_names_both(
    registry: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    set_challenger(registry, "1")

    summary = write_registry(registry, "table")

    table = capsys.readouterr().out
    assert "challenger, champion" in table and "train_start" in table and " window " not in table
    assert summary.startswith(f"{registry.model_name}: 2 version(s), champion v1 (validation AUC LSTM 0.8100")


def test_given_no_registered_model_then_an_empty_listing_with_every_column(settings: Settings) -> None:
    listed = model_versions(settings)

    assert listed.is_empty() and listed.schema == VERSIONS
    assert write_registry(settings, "table").startswith(f"{settings.model_name}: 0 version(s), no champion, 0 decision")
