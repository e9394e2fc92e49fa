"""What is loaded is checked: a registered model's weights carry the SHA-256 recorded at
registration, and a model whose weights file was damaged or altered in the artifact store is
refused in one line naming its version, by `clickstream score`, the champion gate and the
pyfunc alike, before anything is scored. A training checkpoint that is truncated, random bytes,
empty or of the wrong shapes is one line on `train --resume`, never half-loaded, and
`--resume-or-restart` (fit's RESUME_OR_RESTART) starts clean, to the weights of a clean run."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import random
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from cli_process import run_cli
from fixtures import labelled_lake, tiny_settings
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from clickstream.features.sequences import read_sequences
from clickstream.models.bundle import WEIGHTS_SHA256, file_sha256
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.pyfunc import BuyIntentModel
from clickstream.models.registry.champion import gate_challenger
from clickstream.models.registry.loading import load_model
from clickstream.models.registry.store import EXPERIMENT, registered_versions, tracking_client, version_tags
from clickstream.models.training.checkpoints import CHECKPOINT, CheckpointStore, CorruptCheckpointError
from clickstream.models.training.fit import RESUME_OR_RESTART, fit
from clickstream.models.training.train import train_and_register
from clickstream.models.training.tuned import with_tuned
from clickstream.models.training.window import prepare
from clickstream.pipeline.core.config import ModelConfig, Settings, TrainConfig, load_settings
from clickstream.pipeline.core.errors import ModelNotFoundError, TrainingError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, synthetic_tensors

DAMAGE = 4096  # bytes overwritten in the weights file, as the probe did
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # stderr then holds only what clickstream says


@dataclasses.dataclass(frozen=True)
class Trained:
    """A private lake and registry whose champion v`version` was trained cleanly (epochs=2), and
    the window's genuine last checkpoint, kept."""

    settings: Settings
    version: str
    run_id: str
    checkpoint: Path
    genuine: bytes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    settings = labelled_lake(tmp_path_factory.mktemp("integrity"), sessions=1000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointStore, "clear", lambda self: None)  # keep the window's checkpoint
        summary = train_and_register(settings, None, None, device="cpu", promote=True)
    (checkpoint,) = Path(settings.checkpoints).glob(f"*/{CHECKPOINT}")
    return Trained(settings, summary.version, summary.run_id, checkpoint, checkpoint.read_bytes())


def _weights_file(settings: Settings) -> Path:
    """The champion's weights.pt in the local artifact store (the only model of this registry)."""
    (path,) = (settings.home / "mlartifacts").rglob("weights.pt")
    return path


def _overwrite_4kb(path: Path) -> None:
    """Overwrite DAMAGE bytes inside the largest tensor's data with plausible float32s: the file stays a
    readable torch file whose weights differ, the silent kind of damage."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    assert member.file_size >= DAMAGE and member.compress_type == zipfile.ZIP_STORED
    with path.open("r+b") as handle:
        handle.seek(member.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(member.header_offset + 30 + name_length + extra_length)
        handle.write(np.full(DAMAGE // 4, 0.25, dtype=np.float32).tobytes())


@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[bytes]:
    """`path` with 4 KB overwritten for the duration; yields the original bytes and puts them back after."""
    original = path.read_bytes()
    _overwrite_4kb(path)
    try:
        yield original
    finally:
        path.write_bytes(original)


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and text.strip() == text
    return text


def test_given_a_registered_model_then_its_weights_sha256_is_a_version_tag_and_recorded_in_its_artifacts(
    trained: Trained,
) -> None:
    settings = trained.settings
    weights = _weights_file(settings)
    model_dir = weights.parents[1]  # <model>/artifacts/weights.pt

    digest = file_sha256(weights)

    assert version_tags(settings, trained.version)[WEIGHTS_SHA256] == digest
    assert json.loads((weights.parent / "network.json").read_text())[WEIGHTS_SHA256] == digest
    assert Model.load(str(model_dir / "MLmodel")).metadata[WEIGHTS_SHA256] == digest


def test_given_4kb_of_the_champions_weights_overwritten_then_score_is_one_line_exit_2_naming_the_version_and_no_scores(
    trained: Trained, tmp_path: Path
) -> None:
    settings = trained.settings
    weights = _weights_file(settings)
    workdir = tmp_path / "work"
    workdir.mkdir()

    with _damaged(weights) as original:
        damaged = torch.load(weights, weights_only=True)  # still a readable torch file ...
        intact = torch.load(io.BytesIO(original), weights_only=True)
        assert any(not torch.equal(damaged[k], intact[k]) for k in intact)  # ... with other weights
        env = {"CLICKSTREAM_HOME": str(settings.home), **QUIET}
        done = run_cli("score", "--lake", settings.lake, cwd=workdir, env=env)

    assert done.code == 2, done.stderr
    line = done.error_line
    assert f"{settings.model_name} v{trained.version}" in line and "weights" in line and "SHA-256" in line
    assert "Traceback" not in done.stderr
    assert Lake(settings.lake).version("scores") is None  # nothing scored, nothing committed


def test_given_damaged_weights_then_every_load_refuses_them_in_one_line_and_loads_again_once_restored(
    trained: Trained,
) -> None:
    settings = trained.settings
    weights = _weights_file(settings)
    name, version = settings.model_name, trained.version
    frame = read_sequences(Lake(settings.lake), None, None).head(50)
    before = load_model(settings, device="cpu").score(frame)
    uris = [f"models:/{name}@champion", f"models:/{name}/{version}", f"runs:/{trained.run_id}/model", trained.run_id]

    with _damaged(weights):
        for uri in uris:
            with pytest.raises(ModelNotFoundError) as error:
                load_model(settings, uri, device="cpu")
            assert f"{name} v{version}" in _one_line(error.value) and "the registry" in str(error.value), uri
        # the champion gate loads the challenger (here the champion itself) through the same check
        with pytest.raises(ModelNotFoundError, match=f"v{version} .*SHA-256"):
            gate_challenger(settings, version, decided_by="test")
        # MLflow's own clients: the pyfunc checks the weights against its network.json when it loads
        with pytest.raises(MlflowException, match=r"clickstream model not loaded: .*SHA-256") as error:
            BuyIntentModel().load_context(_context(weights.parent))
        _one_line(error.value.message)

    np.testing.assert_array_equal(load_model(settings, device="cpu").score(frame), before)
    assert [str(v.version) for v in registered_versions(settings)] == [version]  # the gate recorded nothing new


def test_given_weights_and_network_json_rewritten_to_agree_then_the_registry_tag_still_refuses_them(
    trained: Trained,
) -> None:
    settings = trained.settings
    weights = _weights_file(settings)
    network = weights.parent / "network.json"
    recorded = network.read_text()

    with _damaged(weights):
        network.write_text(json.dumps({**json.loads(recorded), WEIGHTS_SHA256: file_sha256(weights)}))
        try:
            with pytest.raises(ModelNotFoundError) as error:
                load_model(settings, device="cpu")
        finally:
            network.write_text(recorded)

    line = _one_line(error.value)
    assert f"v{trained.version}" in line and "recorded in the registry" in line and "network.json" not in line


def _context(artifacts: Path) -> mlflow.pyfunc.PythonModelContext:
    names = {"weights": "weights.pt", "network": "network.json", "vocabulary": "vocabulary"}
    names |= {"calibration": "calibration.json", "sequences": "sequences.json"}
    return mlflow.pyfunc.PythonModelContext({k: str(artifacts / v) for k, v in names.items()}, None)


# --- training checkpoints -------------------------------------------------------------------------------------------

N_ITEMS = 60
TINY = ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=16)
FAST = TrainConfig(epochs=2, batch_size=256, learning_rate=2e-2, patience=10, device="cpu", seed=3)


def _tiny_model(seed: int = 0) -> BuyIntentLSTM:
    torch.manual_seed(seed)
    return BuyIntentLSTM(TINY, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


def _state_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _grown(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same names, each tensor one row longer: another model's shapes."""
    return {k: torch.zeros((v.shape[0] + 1, *v.shape[1:])) if v.dim() else v for k, v in tensors.items()}


def _reshaped(part: str) -> Callable[[bytes], bytes]:
    def corrupt(genuine: bytes) -> bytes:
        state = torch.load(io.BytesIO(genuine), weights_only=True)
        if part == "optimizer":
            for moments in state["optimizer"]["state"].values():
                moments["exp_avg"] = torch.zeros(moments["exp_avg"].numel() + 1)
        else:
            state[part] = _grown(state[part])
        return _state_bytes(state)

    return corrupt


# the probe's four corruptions, and the parts a wrong shape can hide in
CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda genuine: genuine[: len(genuine) // 2],
    "random bytes": lambda genuine: random.Random(28).randbytes(len(genuine)),
    "empty": lambda genuine: b"",
    "wrong-shaped": _reshaped("model"),
}
FIT_CORRUPTIONS = {
    **CORRUPTIONS,
    "wrong-shaped best weights": _reshaped("best_weights"),
    "wrong-shaped optimizer moments": _reshaped("optimizer"),
    "a list, not a checkpoint": lambda genuine: _state_bytes([1, 2, 3]),
}
REASONS = {
    "truncated": "not a readable torch file",
    "random bytes": "not a readable torch file",
    "empty": "is empty",
    "wrong-shaped": "does not fit this model",
    "wrong-shaped best weights": "does not fit this model",
    "wrong-shaped optimizer moments": "does not fit this model",
    "a list, not a checkpoint": "holds a list",
}


@pytest.fixture(scope="module")
def small():
    return synthetic_tensors(1000, seed=1, n_items=N_ITEMS), synthetic_tensors(300, seed=2, n_items=N_ITEMS)


@pytest.fixture(scope="module")
def clean_fit(small, tmp_path_factory: pytest.TempPathFactory):
    """A clean two-epoch run, and the genuine checkpoint of its first epoch."""
    train, val = small
    folder = tmp_path_factory.mktemp("clean-fit")
    fit(train, val, _tiny_model(), dataclasses.replace(FAST, epochs=1), checkpoint_dir=folder / "cut")
    return fit(train, val, _tiny_model(), FAST), (folder / "cut" / CHECKPOINT).read_bytes()


@pytest.mark.parametrize("corruption", list(FIT_CORRUPTIONS))
def test_given_a_bad_checkpoint_when_resumed_then_one_line_naming_it_and_nothing_loaded_or_overwritten(
    small, clean_fit, tmp_path: Path, corruption: str
) -> None:
    train, val = small
    bad = FIT_CORRUPTIONS[corruption](clean_fit[1])
    (tmp_path / CHECKPOINT).write_bytes(bad)
    model = _tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(CorruptCheckpointError) as error:
        fit(train, val, model, FAST, checkpoint_dir=tmp_path, resume=True)

    line = _one_line(error.value)
    assert isinstance(error.value, TrainingError)  # the CLI's one line, exit 2
    assert str(tmp_path / CHECKPOINT) in line and REASONS[corruption] in line and "--resume-or-restart" in line
    assert all(torch.equal(model.state_dict()[k], initial[k]) for k in initial)  # not half-loaded
    assert (tmp_path / CHECKPOINT).read_bytes() == bad  # left for a person to look at


@pytest.mark.parametrize("corruption", list(FIT_CORRUPTIONS))
def test_given_a_bad_checkpoint_when_resumed_or_restarted_then_a_warning_and_the_weights_of_a_clean_run(
    small, clean_fit, tmp_path: Path, caplog: pytest.LogCaptureFixture, corruption: str
) -> None:
    train, val = small
    clean, genuine = clean_fit
    (tmp_path / CHECKPOINT).write_bytes(FIT_CORRUPTIONS[corruption](genuine))

    with caplog.at_level(logging.WARNING, logger="clickstream.models.training.fit"):
        restarted = fit(train, val, _tiny_model(), FAST, checkpoint_dir=tmp_path, resume=RESUME_OR_RESTART)

    assert restarted.resumed_epochs == 0 and [s.epoch for s in restarted.history] == [1, 2]
    assert [s.train_loss for s in restarted.history] == [s.train_loss for s in clean.history]
    expected, got = clean.model.state_dict(), restarted.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert REASONS[corruption] in warning and "starting clean" in warning
    assert len(CheckpointStore(tmp_path).load()["history"]) == 2  # replaced by this run's checkpoint


def test_given_a_good_checkpoint_when_resumed_or_restarted_then_it_is_continued_not_restarted(
    small, clean_fit, tmp_path: Path
) -> None:
    train, val = small
    clean, genuine = clean_fit
    (tmp_path / CHECKPOINT).write_bytes(genuine)

    resumed = fit(train, val, _tiny_model(seed=99), FAST, checkpoint_dir=tmp_path, resume=RESUME_OR_RESTART)

    assert resumed.resumed_epochs == 1
    expected, got = clean.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _fresh_registry(trained: Trained, root: Path) -> Settings:
    """The same lake, settings and checkpoint folder as `trained`, with a registry of its own."""
    return tiny_settings(load_settings(lake=trained.settings.lake, home=root / "state", environ={}))


def _plant(trained: Trained, content: bytes) -> None:
    """`content` as the window's checkpoint (a restarted run that registered removed its folder)."""
    trained.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    trained.checkpoint.write_bytes(content)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_given_a_bad_checkpoint_of_the_window_when_train_resumes_then_one_line_and_a_failed_run_and_no_version(
    trained: Trained, tmp_path: Path, corruption: str
) -> None:
    settings = _fresh_registry(trained, tmp_path)
    _plant(trained, CORRUPTIONS[corruption](trained.genuine))

    with pytest.raises(TrainingError) as error:
        train_and_register(settings, None, None, device="cpu", resume=True)

    line = _one_line(error.value)
    assert str(trained.checkpoint) in line and REASONS[corruption] in line
    client = tracking_client(settings)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == line
    assert registered_versions(settings) == []


def test_given_a_wrong_shaped_checkpoint_when_train_resumes_or_restarts_then_it_registers_the_clean_runs_weights(
    trained: Trained, tmp_path: Path
) -> None:
    settings = _fresh_registry(trained, tmp_path)
    _plant(trained, CORRUPTIONS["wrong-shaped"](trained.genuine))

    summary = train_and_register(settings, None, None, device="cpu", resume=RESUME_OR_RESTART)

    restarted = load_model(settings, f"models:/{settings.model_name}/{summary.version}", device="cpu")
    clean = load_model(trained.settings, device="cpu")
    expected, got = clean.model.state_dict(), restarted.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not trained.checkpoint.exists()  # the registered version supersedes the checkpoint


@pytest.mark.slow
def test_given_random_bytes_as_the_checkpoint_then_cli_train_resume_is_one_line_and_resume_or_restart_trains(
    trained: Trained, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    lake = trained.settings.lake
    cli = with_tuned(load_settings(lake=lake, home=home, environ={}))  # what `clickstream train` builds
    config = dataclasses.replace(cli.train, epochs=1, device="cpu")
    folder = Path(cli.checkpoints) / prepare(cli, config, None, None).fingerprint[:16]
    folder.mkdir(parents=True)
    (folder / CHECKPOINT).write_bytes(CORRUPTIONS["random bytes"](trained.genuine))
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = ("train", "--lake", lake, "--epochs", "1", "--device", "cpu")
    env = {"CLICKSTREAM_HOME": str(home), **QUIET}

    refused = run_cli(*args, "--resume", cwd=workdir, env=env)
    restarted = run_cli(*args, "--resume-or-restart", cwd=workdir, env=env)

    assert refused.code == 2 and "Traceback" not in refused.stderr
    (line,) = [text for text in refused.stderr.splitlines() if text.startswith("error:")]  # besides MLflow's log
    assert line == refused.stderr.strip().splitlines()[-1]
    assert str(folder / CHECKPOINT) in line and "not a readable torch file" in line and "--resume-or-restart" in line
    assert restarted.code == 0, restarted.stderr[-3000:]
    assert "starting clean" in restarted.stderr and "registered as challenger" in restarted.stdout
    assert not (folder / CHECKPOINT).exists()
