"""Training checkpoints on storage every worker sees: a local or shared folder, or the lake's
object store (any fsspec URL, e.g. ``s3://bucket/lake/_checkpoints/<fingerprint>``).

A retried training task may run on another machine than the attempt it continues, so the
checkpoint never lives on a worker's own disk unless that disk is the configured store.
Writes go to a temporary name beside the checkpoint and are then moved into place: a reader
(or the next attempt after a kill) sees the previous complete checkpoint or the new one,
never a half-written file. Only this module touches the store; it needs fsspec and torch.

A checkpoint that cannot be read back (truncated, empty, random bytes, not a checkpoint's
dict) raises CorruptCheckpointError, one line naming it: it is never half-used. Whether
training then stops or starts clean is the caller's choice (models.training.fit, `resume`).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import torch

from clickstream.models.torch_files import torch_bytes
from clickstream.pipeline.core.errors import TrainingError

CHECKPOINT = "last.pt"


class CorruptCheckpointError(TrainingError):
    """The checkpoint exists but is not one this code can continue from (damaged or of another model)."""


class CheckpointStore:
    """The checkpoint of one training run: `<folder>/last.pt`, replaced atomically after each epoch."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder).rstrip("/")
        self.is_local = "://" not in self.folder or self.folder.startswith("file://")
        # other workers write the same store: a cached object-store listing could hide their checkpoint
        options = {} if self.is_local else {"use_listings_cache": False}
        self.fs, self._folder = fsspec.core.url_to_fs(self.folder, **options)
        self.path = f"{self._folder}/{CHECKPOINT}"

    def __repr__(self) -> str:
        return f"{self.folder}/{CHECKPOINT}"

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (torch.save-able) as the checkpoint, atomically."""
        self.fs.makedirs(self._folder, exist_ok=True)
        temp = f"{self._folder}/.{CHECKPOINT}.{uuid.uuid4().hex}.tmp"
        try:
            data = torch_bytes(state)
            if self.is_local:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            else:
                self.fs.pipe_file(temp, data)  # one object, whole or absent
                self.fs.mv(temp, self.path)
        finally:
            if self.fs.exists(temp):
                self.fs.rm(temp)

    def load(self) -> dict[str, Any]:
        """The checkpoint's state, tensors on CPU (weights only: nothing in it executes code).
        TrainingError when the store cannot be read, CorruptCheckpointError when the file is empty,
        truncated, not a torch file or not a dict."""
        try:
            data = self.fs.cat_file(self.path)
        except OSError as error:
            raise TrainingError(f"cannot read checkpoint {self}: {_first_line(error)}") from None
        if not data:
            raise CorruptCheckpointError(f"checkpoint {self} is empty")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # whatever torch's readers raise: these bytes are no checkpoint
            raise CorruptCheckpointError(
                f"checkpoint {self} is not a readable torch file ({len(data):,} bytes; truncated or damaged: "
                f"{_reason(error)})"
            ) from None
        if not isinstance(state, dict):
            raise CorruptCheckpointError(f"checkpoint {self} holds a {type(state).__name__}, not a checkpoint")
        return state

    def clear(self) -> None:
        """Remove the run's folder (its registered model supersedes it); nothing when absent."""
        if self.fs.exists(self._folder):
            self.fs.rm(self._folder, recursive=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__


def _reason(error: BaseException) -> str:
    """A short reason for a failed torch.load (its weights-only refusal is a page of advice, not a reason)."""
    line = _first_line(error)
    if line.startswith("Weights only load failed"):
        return f"{type(error).__name__}: not a weights-only torch pickle"
    return f"{type(error).__name__}: {line[:160]}"
