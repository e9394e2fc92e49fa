"""What long work shows while it runs, and what else may reach the console.

`LiveStatus` (or `track` over an iterable) is a rich progress bar while stderr is an interactive
terminal. Elsewhere (an Airflow task log, CI, a pipe) it logs plain INFO lines such as
`ingest: 3/10 files read, 1,234,567 rows, 00:42`: one each LOG_EVERY_S seconds of work, and the last
one when work that took that long is done. Work done sooner logs nothing (its summary says it all),
and so does a failure (its error says where it stopped): a quick failure stays one line. The lines
go through `logging`: to stderr under the CLI (`log_to_stderr`), to the task log under Airflow,
nowhere in a library call whose program set up no logging.

`quiet_libraries` silences, at their source, third-party lines that say nothing about the work.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TextIO, TypeVar

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

T = TypeVar("T")

LOG_EVERY_S = 30.0  # off a terminal, the most often a LiveStatus logs a line

log = logging.getLogger(__name__)


class LiveStatus:
    """The progress of one long step: `done` of `total` `unit`s (total None: unknown), with the
    latest value of a few `fields` (ints shown as counts, `1,234 rows`; floats as measures,
    `loss 0.2134`) and the time since it began. A bar on a terminal, logged lines elsewhere (see the
    module docstring); a context manager, closed on leaving it."""

    def __init__(
        self,
        description: str,
        total: int | None = None,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self._fields: dict[str, float] = {}
        self._clock = clock
        self._began = self._logged_at = clock()
        self._bar = _bar(self, stream or sys.stderr)

    def update(self, advance: int = 1, *, completed: int | None = None, **fields: float) -> None:
        """Count `advance` more units done (or `completed` in all) and take the new `fields`."""
        self.done = self.done + advance if completed is None else completed
        self._fields.update(fields)
        if self._bar is not None:
            progress, task = self._bar
            progress.update(task, completed=self.done, fields=self._text())
        elif self._clock() - self._logged_at >= LOG_EVERY_S:
            self._log()

    def close(self, finished: bool = True) -> None:
        """Remove the bar; off a terminal, log the last line of work that `finished` after
        LOG_EVERY_S or more."""
        if self._bar is not None:
            self._bar[0].stop()
        elif finished and self._clock() - self._began >= LOG_EVERY_S:
            self._log()

    def _line(self) -> str:
        """`description: done/total unit, fields, mm:ss`, as logged."""
        count = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        parts = [f"{count} {self.unit}".rstrip(), self._text(), _elapsed(self._clock() - self._began)]
        return f"{self.description}: " + ", ".join(part for part in parts if part)

    def _text(self) -> str:
        return ", ".join(
            f"{value:,} {name}" if isinstance(value, int) else f"{name} {value:.4f}"
            for name, value in self._fields.items()
        )

    def _log(self) -> None:
        self._logged_at = self._clock()
        log.info("%s", self._line())

    def __enter__(self) -> LiveStatus:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close(finished=kind is None)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Yield `items` unchanged, each one counted as done in a LiveStatus once the loop body has run."""
    with LiveStatus(description, total, unit) as status:
        for item in items:
            yield item
            status.update()


def _bar(status: LiveStatus, stream: TextIO) -> tuple[Progress, TaskID] | None:
    """A started rich progress bar for `status` on `stream` when it is a terminal, else None. Lines
    written to stderr meanwhile (logging) print above the bar; stdout, which carries a command's
    data, is left alone."""
    if not stream.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(status.unit),
        TextColumn("{task.fields[fields]}"),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
        redirect_stdout=False,
    )
    task = progress.add_task(status.description, total=status.total, fields="")
    progress.start()
    return progress, task


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


# ---- the console of a command or a task ----------------------------------------------------------

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


class _Stderr(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is at each record: under a progress bar that is the
    bar's proxy, which prints the line above the bar."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def log_to_stderr() -> None:
    """Show clickstream's INFO lines (progress, what a stage is doing) and every library's warnings
    on stderr in LOG_FORMAT, unless the process has logging handlers already: a host such as Airflow
    then shows them its own way, and once. Airflow's own configuration, when a command imports it
    later, replaces this handler with its own."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    root.addHandler(handler)
    logging.getLogger("clickstream").setLevel(logging.INFO)


# MLflow logs each store creation, migration and system-metrics thread at INFO and draws a progress bar
# per artifact download: dozens of lines, in a terminal or a task log, that read like trouble. MLflow
# reads the level when it is imported and the bar's switch at each download; a user's own setting wins.
QUIET_LIBRARIES = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# Warnings known to be harmless here, each by its category, the module it is attributed to and its
# text, so that any other warning, of these modules too, still shows.
HARMLESS_WARNINGS = (
    # an in-process Airflow run (`clickstream demo`, dag.test) serves its task API through FastAPI's
    # test client, whose Starlette asks for the httpx2 package; httpx serves it the same
    (UserWarning, r"fastapi\.testclient", r"Using `httpx` with `starlette\.testclient` is deprecated"),
)


def quiet_libraries(context: object = None) -> None:
    """Set QUIET_LIBRARIES where the environment has not, and ignore HARMLESS_WARNINGS. Called first by
    the CLI and, as their on_execute_callback (whose `context` it ignores), before each DAG task."""
    del context
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    for category, module, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
