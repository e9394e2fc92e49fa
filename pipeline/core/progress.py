"""Progress bars for long work: drawn on an interactive terminal, silent in logs and tests."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import Progress
from rich.progress import track as rich_track

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items` unchanged, with a rich progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield from items
        return

    yield from rich_track(items, description=description, total=total, transient=True)


class LiveStatus:
    """A one-line live status (e.g. epoch loss/AUC) on a terminal; a no-op elsewhere."""

    def __init__(self, description: str, total: int) -> None:
        self._progress = None
        if sys.stderr.isatty():

            self._progress = Progress(transient=True)
            self._task = self._progress.add_task(description, total=total)
            self._progress.start()

    def update(self, advance: int = 1, **fields: float) -> None:
        if self._progress is not None:
            text = " ".join(f"{k}={v:.4f}" for k, v in fields.items())
            self._progress.update(self._task, advance=advance, description=text or None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
