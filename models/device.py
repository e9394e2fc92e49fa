"""Which torch device a run trains or scores on, in which float32 precision, and on how many CPU threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def float32_precision(*, tf32: bool) -> Iterator[None]:
    """Inside the block, float32 matmuls and cuDNN LSTMs run in TF32 (`tf32`, on GPUs that have
    it: faster, about 1e-3 relative error) or in IEEE float32; the previous settings come back
    after it. torch's own default lets cuDNN's LSTM use TF32, so plain float32 must be asked for.
    No effect on CPU."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.rnn)
    before = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        for backend, mode in zip(backends, before, strict=True):
            backend.fp32_precision = mode


@contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Inside the block, torch runs CPU ops on `threads` intra-op threads when `device` is the CPU
    (no effect on a GPU); torch's previous count comes back after it. The LSTM's per-step matmuls
    are small: on a 2-core machine a second thread made a training step several times slower
    (both threads spin waiting for each other, and any other work on the cores stretches every
    wait), so training and scoring default to one (benchmarks/RESULTS.md, "demo")."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
