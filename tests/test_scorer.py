"""Loading a registered model for scoring: which URIs resolve, the scores it gives,
and one-line errors for everything else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import labelled_lake

from clickstream.features.sequences import read_sequences
from clickstream.features.tensors import CONTINUOUS_FEATURES
from clickstream.models.bundle import ModelBundle
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.registry.loading import load_model
from clickstream.models.registry.store import tracking_client
from clickstream.models.training.train import TrainSummary, train_and_register
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import ModelNotFoundError
from clickstream.pipeline.core.lake import Lake


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainSummary]:
    settings = labelled_lake(tmp_path_factory.mktemp("scorer"), sessions=1000, epochs=1)
    return settings, train_and_register(settings, None, None, device="cpu", promote=True)


@pytest.fixture(scope="module")
def champion(registry: tuple[Settings, TrainSummary]) -> ModelBundle:
    return load_model(registry[0], device="cpu")


def test_given_no_uri_then_the_champion_loads_with_its_name_version_and_vocabulary(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle
) -> None:
    settings, summary = registry

    assert (champion.model_name, champion.model_version) == (settings.model_name, summary.version)
    assert champion.vocabulary.n_items > 2 and not champion.model.training


def test_given_sessions_then_scores_are_float32_probabilities_in_input_row_order(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle
) -> None:
    frame = read_sequences(Lake(registry[0].lake), None, None)

    scores = champion.score(frame)

    assert scores.dtype == np.float32 and scores.shape == (frame.height,)
    assert ((scores >= 0) & (scores <= 1)).all()
    # in another row order the sessions share batches (matrix products) with others: equal up to rounding
    np.testing.assert_allclose(champion.score(frame.reverse()), scores[::-1], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(champion.score(frame), scores)


def test_given_sessions_then_running_scores_end_at_each_sessions_score(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle
) -> None:
    frame = read_sequences(Lake(registry[0].lake), None, None).head(200)

    running = champion.running_scores(frame)

    last_event = np.cumsum(frame["n_events"].to_numpy()) - 1
    assert running.dtype == np.float32 and running.shape == (int(frame["n_events"].sum()),)
    np.testing.assert_allclose(running[last_event], champion.score(frame), atol=1e-6)


@pytest.mark.parametrize(
    "form", ["models:/{name}/{version}", "models:/{name}@challenger", "runs:/{run}/model", "{run}"]
)
def test_given_each_registry_uri_form_then_the_same_model_loads(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle, form: str
) -> None:
    settings, summary = registry
    frame = read_sequences(Lake(settings.lake), None, None).head(100)

    scorer = load_model(
        settings, form.format(name=settings.model_name, version=summary.version, run=summary.run_id), device="cpu"
    )

    assert scorer.model_version == summary.version
    np.testing.assert_array_equal(scorer.score(frame), champion.score(frame))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/clickstream-buy-intent@nope", "not found"),
        ("models:/clickstream-buy-intent/42", "not found"),
        ("models:/no-such-model@champion", "not found"),
        ("runs:/0123456789abcdef0123456789abcdef/model", "not found"),
        ("/tmp/some/model", "not a registry model URI"),
        ("s3://bucket/model", "not a registry model URI"),
        ("file:///etc/passwd", "not a registry model URI"),
    ],
)
def test_given_a_uri_outside_the_registry_then_model_not_found_in_one_line(
    registry: tuple[Settings, TrainSummary], uri: str, message: str
) -> None:
    with pytest.raises(ModelNotFoundError, match=message) as error:
        load_model(registry[0], uri)

    assert "\n" not in str(error.value) and uri in str(error.value)


def test_given_an_empty_registry_then_loading_the_champion_fails_in_one_line(settings: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="champion") as error:
        load_model(settings)

    assert "\n" not in str(error.value)


def test_given_a_registered_model_without_a_vocabulary_then_it_is_refused_in_one_line(
    registry: tuple[Settings, TrainSummary],
) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    settings, _ = registry
    experiment = tracking_client(settings).get_experiment_by_name("clickstream").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    foreign = mlflow.register_model(info.model_uri, settings.model_name)

    with pytest.raises(ModelNotFoundError, match="not a clickstream model") as error:
        load_model(settings, f"models:/{settings.model_name}/{foreign.version}")
    assert "\n" not in str(error.value)


def test_given_a_version_saved_before_the_heads_linear_part_existed_then_it_loads_without_one_and_scores_alike(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle, tmp_path: Path
) -> None:
    network = champion.model
    config = dataclasses.replace(network.config, head_linear=False)
    sizes = (network.item.num_embeddings, network.category.num_embeddings, network.event_type.num_embeddings)
    older = BuyIntentLSTM(config, *sizes, network.n_continuous)
    older.load_state_dict({k: v for k, v in network.state_dict().items() if not k.startswith("head_linear.")})
    bundle = dataclasses.replace(champion, model=older.eval())
    paths = bundle.save(tmp_path)
    saved = json.loads(paths["network"].read_text())
    del saved["config"]["head_linear"]  # as network.json was written then
    paths["network"].write_text(json.dumps(saved))

    loaded = ModelBundle.load({name: str(path) for name, path in paths.items()})

    assert loaded.model.head_linear is None and champion.model.head_linear is not None
    frame = read_sequences(Lake(registry[0].lake), None, None).head(300)
    np.testing.assert_array_equal(loaded.score(frame), bundle.score(frame))


def test_given_a_version_trained_before_the_last_input_was_added_then_it_loads_and_scores_on_the_inputs_it_knows(
    registry: tuple[Settings, TrainSummary], champion: ModelBundle, tmp_path: Path
) -> None:
    network = champion.model
    sizes = (network.item.num_embeddings, network.category.num_embeddings, network.event_type.num_embeddings)
    torch.manual_seed(3)
    older = BuyIntentLSTM(network.config, *sizes, len(CONTINUOUS_FEATURES) - 1).eval()
    bundle = dataclasses.replace(champion, model=older)
    paths = bundle.save(tmp_path)
    assert json.loads(paths["network"].read_text())["continuous_features"] == list(CONTINUOUS_FEATURES[:-1])

    loaded = ModelBundle.load({name: str(path) for name, path in paths.items()})

    frame = read_sequences(Lake(registry[0].lake), None, None).head(300)
    assert loaded.model.n_continuous == len(CONTINUOUS_FEATURES) - 1
    np.testing.assert_array_equal(loaded.score(frame), bundle.score(frame))


def test_given_a_version_whose_inputs_are_not_a_prefix_of_this_codes_then_loading_refuses_it(
    champion: ModelBundle, tmp_path: Path
) -> None:
    paths = champion.save(tmp_path)
    saved = json.loads(paths["network"].read_text())
    saved["continuous_features"][0], saved["continuous_features"][1] = saved["continuous_features"][1::-1]
    paths["network"].write_text(json.dumps(saved))

    with pytest.raises(ValueError, match="other continuous features"):
        ModelBundle.load({name: str(path) for name, path in paths.items()})
