"""Training checkpoints on storage every worker sees: a local or shared folder, or the lake's
object store (any fsspec URL, e.g. ``s3://bucket/lake/_checkpoints/<fingerprint>``).

A retried training task may run on another machine than the attempt it continues, so the
checkpoint never lives on a worker's own disk unless that disk is the configured store.
Writes go to a temporary name beside the checkpoint and are then moved into place: a reader
(or the next attempt after a kill) sees the previous complete checkpoint or the new one,
never a half-written file. Only this module touches the store; it needs fsspec and torch.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import torch

CHECKPOINT = "last.pt"


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
            if self.is_local:
                with open(temp, "wb") as handle:
                    torch.save(state, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            else:
                buffer = io.BytesIO()
                torch.save(state, buffer)
                self.fs.pipe_file(temp, buffer.getvalue())  # one object, whole or absent
                self.fs.mv(temp, self.path)
        finally:
            if self.fs.exists(temp):
                self.fs.rm(temp)

    def load(self) -> dict[str, Any]:
        """The checkpoint's state, tensors on CPU (weights only: nothing in it executes code)."""
        data = self.fs.cat_file(self.path)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def clear(self) -> None:
        """Remove the run's folder (its registered model supersedes it); nothing when absent."""
        if self.fs.exists(self._folder):
            self.fs.rm(self._folder, recursive=True)
