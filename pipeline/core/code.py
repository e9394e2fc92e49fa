"""Which code made a thing: recorded with every lake commit and every training run."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path


@functools.cache  # the code does not change while a process runs: git is asked once
def code_version() -> str:
    """The git commit of the code (suffixed -dirty with uncommitted changes), else the package version."""
    repo = Path(__file__).parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if sha:
        return f"{sha}-dirty" if dirty else sha
    try:
        return f"clickstream {importlib.metadata.version('clickstream')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
