"""Choosing where to train: auto falls back to the CPU, an impossible request is a user error."""

from __future__ import annotations

import pytest
import torch

from clickstream.models.device import resolve_device
from clickstream.pipeline.core.errors import TrainingError


def test_given_auto_then_cuda_when_torch_sees_a_gpu_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_given_cpu_then_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_given_cuda_without_a_gpu_then_a_one_line_training_error():
    with pytest.raises(TrainingError, match="--device cpu") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)


def test_given_an_unknown_device_then_training_error():
    with pytest.raises(TrainingError, match="unknown device"):
        resolve_device("tpu")
