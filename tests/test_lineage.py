"""Lineage: a registered model names the Delta versions of `sequences` (and of the `events` behind
them) it learned from, in its run and on its registered version, and `train --as-of` retrains on
exactly that snapshot: on the CPU with the same seed, the same weights. The DAGs' Assets name the
landing folder, each lake table, the model's aliases and the reports by URI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
import torch
from fixtures import labelled_lake, synthetic_sequences, write_sequences

from clickstream.models.registry.loading import load_model
from clickstream.models.registry.store import tracking_client
from clickstream.models.training.train import TrainSummary, train_challenger
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LakeFormatError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.orchestrate.nightly import lineage

NAME = "clickstream-buy-intent"


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainSummary, int]:
    """A model trained on the lake's sequences, then the sequences replaced by other sessions."""
    settings = labelled_lake(tmp_path_factory.mktemp("lineage"))
    version = Lake(settings.lake).version("sequences")
    assert version is not None
    summary = train_challenger(settings, None, None, device="cpu")
    write_sequences(Lake(settings.lake), synthetic_sequences(sessions=2000, days=4, seed=5))
    return settings, summary, version


def _weights(settings: Settings, version: str) -> dict[str, torch.Tensor]:
    return load_model(settings, f"models:/{NAME}/{version}", device="cpu").model.state_dict()


def test_given_a_trained_model_then_its_run_and_version_name_the_sequences_version_it_read(
    first: tuple[Settings, TrainSummary, int],
) -> None:
    settings, summary, version = first
    client = tracking_client(settings)
    registered = client.get_model_version(NAME, summary.version)
    run = client.get_run(summary.run_id)

    assert registered.tags["sequences_version"] == str(version)
    assert run.data.params["sequences_version"] == str(version)
    sources = {dataset.dataset.source for dataset in run.inputs.dataset_inputs}
    assert len(sources) == 1
    assert f'"delta_table_version": {version}' in sources.pop()
    assert Lake(settings.lake).version("sequences") != version  # the lake moved on since


def test_given_as_of_the_version_a_model_saw_when_retrained_then_the_weights_are_the_same(
    first: tuple[Settings, TrainSummary, int], tmp_path: Path
) -> None:
    settings, summary, version = first
    elsewhere = dataclasses.replace(  # the same lake, a fresh registry: nothing to reuse
        settings, home=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    again = train_challenger(elsewhere, None, None, device="cpu", as_of=version)
    latest = train_challenger(elsewhere, None, None, device="cpu")

    assert (again.train_sessions, again.val_sessions) == (summary.train_sessions, summary.val_sessions)
    mine, theirs = _weights(settings, summary.version), _weights(elsewhere, again.version)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[name], theirs[name]) for name in mine)
    assert not all(torch.equal(mine[name], value) for name, value in _weights(elsewhere, latest.version).items())
    mlflow.set_tracking_uri(settings.tracking_uri)


def test_given_as_of_a_version_the_table_never_had_then_one_line_error(
    first: tuple[Settings, TrainSummary, int],
) -> None:
    settings, _, _ = first
    with pytest.raises(LakeFormatError, match=r"sequences of lake .* has no version 99$"):
        train_challenger(settings, None, None, device="cpu", as_of=99)


def test_given_a_local_lake_then_each_table_asset_is_named_by_its_folder_as_a_file_uri(settings: Settings) -> None:
    assets = lineage(settings)
    tables = ("events", "quarantine", "sequences", "scores", "cookie_intent")
    assert [getattr(assets, t).uri for t in tables] == [(Path(settings.lake) / t).as_uri() for t in tables]
    assert [getattr(assets, t).name for t in tables] == [getattr(assets, t).uri for t in tables]  # named by URI
    assert assets.landing.uri == Path(settings.landing).as_uri()
    assert assets.reports.uri == (Path(settings.home) / "reports").as_uri()
    assert all(asset.uri.startswith("file:///") for asset in (assets.events, assets.landing, assets.reports))


def test_given_an_s3_lake_then_table_assets_are_s3_uris_and_models_mlflow_model_uris(settings: Settings) -> None:
    assets = lineage(dataclasses.replace(settings, lake="s3://bucket/lake/"))
    assert assets.events.uri == "s3://bucket/lake/events"
    assert assets.cookie_intent.uri == "s3://bucket/lake/cookie_intent"
    assert (assets.champion.name, assets.champion.uri) == ("clickstream-champion", f"models:/{NAME}@champion")
    assert (assets.challenger.name, assets.challenger.uri) == ("clickstream-challenger", f"models:/{NAME}@challenger")
    assert assets.champion.group == "model"
    every = [getattr(assets, field.name) for field in dataclasses.fields(assets)]
    assert len({a.name for a in every}) == len({a.uri for a in every}) == len(every)  # Airflow keys them both
