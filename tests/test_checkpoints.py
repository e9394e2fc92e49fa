"""Checkpoints live where every worker sees them (a local or shared folder, or the lake's object
store), are replaced whole or not at all, and default to the lake's `_checkpoints/`; bytes that are
no checkpoint (empty, truncated, random, not a dict) are one line naming it, never a traceback."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import torch

from clickstream.models.training.checkpoints import CHECKPOINT, CheckpointStore, CorruptCheckpointError
from clickstream.pipeline.core.config import load_settings


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "checkpoints" / "abc")
    return f"{request.getfixturevalue('s3_bucket')}/lake/_checkpoints/abc"


def test_given_a_saved_state_when_another_store_object_loads_it_then_tensors_and_values_round_trip(folder):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "history": [{"epoch": 1, "val_auc": 0.7}]}
    CheckpointStore(folder).save(state)

    elsewhere = CheckpointStore(folder)  # a retry on another worker opens the same URL
    assert elsewhere.exists()
    loaded = elsewhere.load()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["history"] == state["history"]


def test_given_a_second_save_then_it_replaces_the_first_whole_and_leaves_no_temporary(folder):
    store = CheckpointStore(folder)
    store.save({"epoch": 1, "big": torch.zeros(50_000)})
    store.save({"epoch": 2, "big": torch.ones(10)})

    assert store.load()["epoch"] == 2 and store.load()["big"].numel() == 10
    names = [path.rsplit("/", 1)[-1] for path in store.fs.find(store.fs._strip_protocol(folder))]
    assert names == [CHECKPOINT]


def test_given_a_failing_state_when_saved_then_the_previous_checkpoint_stays_intact(folder):
    store = CheckpointStore(folder)
    store.save({"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        store.save({"epoch": 2, "bad": Unpicklable()})

    assert store.load() == {"epoch": 1}


def _torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (_torch_bytes({"epoch": 1, "big": torch.zeros(5_000)})[:3_000], "not a readable torch file"),
        (random.Random(3).randbytes(4_000), "not a readable torch file"),
        (_torch_bytes([1, 2, 3]), "holds a list, not a checkpoint"),
    ],
    ids=["empty", "truncated", "random bytes", "a list"],
)
def test_given_bytes_that_are_no_checkpoint_then_loading_is_one_line_naming_it(folder, content, reason):
    store = CheckpointStore(folder)
    store.save({"epoch": 1})
    store.fs.pipe_file(store.path, content)

    with pytest.raises(CorruptCheckpointError, match=reason) as error:
        store.load()

    assert "\n" not in str(error.value) and str(store) in str(error.value)


def test_given_a_cleared_store_then_nothing_is_left_and_clearing_again_is_a_no_op(folder):
    store = CheckpointStore(folder)
    store.save({"epoch": 1})
    store.clear()
    store.clear()
    assert not store.exists() and not store.fs.exists(store.fs._strip_protocol(folder))


def test_given_no_setting_then_checkpoints_go_under_the_lake_else_under_clickstream_checkpoints(tmp_path):
    assert load_settings(lake="s3://bucket/lake", environ={}).checkpoints == "s3://bucket/lake/_checkpoints"
    local = load_settings(lake=str(tmp_path / "lake"), environ={})
    assert local.checkpoints == f"{tmp_path / 'lake'}/_checkpoints"
    shared = load_settings(lake="s3://bucket/lake", environ={"CLICKSTREAM_CHECKPOINTS": "s3://other/ckpt"})
    assert shared.checkpoints == "s3://other/ckpt"
