"""Which torch device a run trains or scores on."""

from __future__ import annotations

import torch

from clickstream.pipeline.core.errors import TrainingError

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The device for `name`: "auto" is CUDA when torch sees a GPU, else CPU; "cpu" is CPU;
    "cuda" (or "cuda:N") is that GPU. Asking for CUDA on a machine without one, or for an
    unknown name, raises TrainingError with a one-line message."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name} asked for a GPU but torch sees none; use --device cpu or auto")
        return torch.device(name)
    raise TrainingError(f"unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)}")
