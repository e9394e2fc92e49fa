"""The raw input formats, by the name users give as `--format`: the one list the CLI's choices,
the ingest, the nightly landing scan and the generator read.

Importing this module is cheap (no polars): the CLI builds its `--format` choices from it
before any command runs. `InputFormat.reader()` imports the format's reader when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clickstream.pipeline.core.errors import InputError

if TYPE_CHECKING:
    from clickstream.pipeline.ingest.raw_fields import ParsedChunk, TimeWindow
    from clickstream.pipeline.ingest.raw_files import ReadLimits

    # read(files, buys, window, limits): each file's parsed chunks, files in the order given
    BatchReader = Callable[[list[Path], list[Path], TimeWindow, ReadLimits], Iterator[tuple[Path, ParsedChunk]]]


@dataclass(frozen=True)
class InputFormat:
    """One raw log format: its name, where its reader lives and how nightly landing files are named."""

    name: str
    reader_path: str  # "module:function" of its BatchReader
    landing: tuple[str, ...] = ()  # glob patterns of its files in a landing folder (none: not scanned)
    landing_buys: tuple[str, ...] = ()  # glob patterns of the buys files that go with them
    takes_buys: bool = False  # `--buys` applies
    generated: bool = False  # `clickstream generate` writes it

    def reader(self) -> BatchReader:
        module, _, function = self.reader_path.partition(":")
        return getattr(importlib.import_module(module), function)


FORMATS: dict[str, InputFormat] = {
    fmt.name: fmt
    for fmt in (
        InputFormat(
            "yoochoose",
            "clickstream.pipeline.ingest.read_yoochoose:read_batch",
            landing=("*clicks*.dat*",),
            landing_buys=("*buys*.dat*",),
            takes_buys=True,
            generated=True,
        ),
        InputFormat(
            "events",
            "clickstream.pipeline.ingest.read_events:read_batch",
            landing=("events*.jsonl*", "events*.json*", "events*.csv*", "events*.parquet"),
            generated=True,
        ),
        InputFormat("retailrocket", "clickstream.pipeline.ingest.read_retailrocket:read_batch"),
    )
}
GENERATED = tuple(name for name, fmt in FORMATS.items() if fmt.generated)


def input_format(name: str) -> InputFormat:
    """The format called `name`; InputError listing the known ones otherwise."""
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[name]
