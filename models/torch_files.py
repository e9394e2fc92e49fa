"""Torch state to bytes and files, with the write done by Python so that its failure names the cause."""

from __future__ import annotations

import io
from pathlib import Path

import torch


def torch_bytes(state: object) -> bytes:
    """`state` as torch.save writes it, in memory: the file write is then Python's own, whose failure
    (a full disk, say) is an OSError naming its cause, where torch's writer only says "file write
    failed"."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_torch(state: object, path: Path) -> None:
    """`state` written to `path` as torch.save writes it (see `torch_bytes`)."""
    path.write_bytes(torch_bytes(state))
