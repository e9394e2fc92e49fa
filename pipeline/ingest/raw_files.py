"""Raw log files as numbered lines: opening plain or gzip files, cutting them into chunks
of whole lines, flagging lines no format can read, and splitting delimited lines into
string fields.

Line numbers are physical: line 1 is the first line of the (decompressed) file, and every
line, blank or not, has its number. A line ends at "\\n"; a "\\r" just before it is dropped,
so CRLF files read like LF files. Work is vectorised over a chunk (numpy over the bytes,
polars' CSV parser over the fields), never per line, except for the rare lines that need
it (invalid UTF-8, quoted CSV fields).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream.pipeline.core.errors import InputError

CHUNK_BYTES = 32 << 20  # numpy's byte scans run fastest on chunks that fit the CPU caches

# Per-line problems found before any format looks at a line (code -> quarantine reason).
OK, BLANK, NUL, BAD_UTF8, COLUMNS = 0, 1, 2, 3, 4
LINE_REASONS = {BLANK: "blank line", NUL: "NUL byte", BAD_UTF8: "non-UTF-8 bytes"}


@dataclass(frozen=True)
class LineChunk:
    """Consecutive whole lines of one file: `data[starts[i]:ends[i]]` is line `first_line + i`."""

    file: str
    data: bytes
    first_line: int
    starts: np.ndarray  # int64 offsets of each line's first byte
    ends: np.ndarray  # int64 offsets just past each line's text (before "\r\n" or "\n")

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def line_numbers(self) -> np.ndarray:
        return np.arange(self.first_line, self.first_line + len(self), dtype=np.int64)

    def text(self, index: np.ndarray) -> list[str]:
        """The selected lines as text, invalid UTF-8 replaced by U+FFFD."""
        data, starts, ends = self.data, self.starts, self.ends
        return [data[starts[i] : ends[i]].decode("utf-8", "replace") for i in index.tolist()]

    def problems(self) -> np.ndarray:
        """uint8 code per line: OK, BLANK, NUL or BAD_UTF8 (see LINE_REASONS)."""
        codes = np.zeros(len(self), dtype=np.uint8)
        codes[self.ends == self.starts] = BLANK
        raw = np.frombuffer(self.data, dtype=np.uint8)
        nul_lines = self._lines_of(np.flatnonzero(raw == 0))
        codes[nul_lines] = NUL
        if raw.max(initial=0) >= 0x80 and not _is_utf8(self.data):
            for i in np.unique(self._lines_of(np.flatnonzero(raw >= 0x80))).tolist():
                if codes[i] == OK and not _is_utf8(self.data[self.starts[i] : self.ends[i]]):
                    codes[i] = BAD_UTF8
        return codes

    def rejects(self, index: np.ndarray, codes: np.ndarray, reasons: dict[int, str] = LINE_REASONS) -> pl.DataFrame:
        """Quarantine rows (line, raw, reason) for the lines at `index`, reason `reasons[codes[i]]`."""
        return pl.DataFrame(
            {
                "line": self.line_numbers[index],
                "raw": pl.Series(self.text(index), dtype=pl.String),
                "reason": pl.Series([reasons[c] for c in codes[index].tolist()], dtype=pl.String),
            }
        )

    def joined(self, keep: np.ndarray) -> bytes:
        """The kept lines' text, each followed by "\\n" (CR of CRLF dropped)."""
        raw = np.frombuffer(self.data, dtype=np.uint8)
        cr = self.ends[self.ends < len(raw)]
        cr = cr[raw[cr] == 13]
        if keep.all() and len(cr) == 0:
            return self.data
        lengths = np.diff(np.append(self.starts, len(raw)))
        mask = np.repeat(keep, lengths)
        mask[cr] = False
        return raw[mask].tobytes()

    def strings(self, keep: np.ndarray) -> pl.Series:
        """The kept lines as a String series, in order (they must be valid UTF-8)."""
        data = self.joined(keep)
        if data and not data.endswith(b"\n"):
            data += b"\n"
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        offsets = np.concatenate(([0], newlines + 1)).astype(np.int64)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        array = pa.Array.from_buffers(pa.large_string(), len(newlines), buffers)
        return pl.Series("line_text", array, dtype=pl.String).str.strip_suffix("\n")

    def header(self) -> list[str]:
        """The first line as CSV column names (quotes and surrounding spaces removed).

        Raises InputError when the chunk does not start the file or the line is no header.
        """
        if self.first_line != 1 or self.problems()[0] != OK:
            raise InputError(f"{self.file}: line 1 is not a CSV header")
        return [name.strip() for name in next(csv.reader([self.text(np.array([0]))[0]]))]

    def _lines_of(self, offsets: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, offsets, side="right") - 1


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@contextlib.contextmanager
def open_raw(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when its name ends in `.gz`.

    Raises InputError naming the file when it is missing, a directory, empty or unreadable.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    try:
        handle = path.open("rb")
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror})") from None
    with handle:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                yield stream
        else:
            yield handle


def iter_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineChunk]:
    """The file's lines in order, in chunks of about `chunk_bytes` (one long line may exceed it).

    Raises InputError naming the file (and the last good line) for an empty file or a
    corrupt or truncated gzip stream.
    """
    with open_raw(path) as stream:
        carry, first_line = b"", 1
        while True:
            try:
                block = stream.read(chunk_bytes)
            except (EOFError, OSError, zlib.error) as error:
                last = first_line - 1 + carry.count(b"\n")
                raise InputError(f"{path}: corrupt or truncated gzip after line {last} ({error})") from None
            data = carry + block if carry else block
            if not block:
                if first_line == 1 and not data:
                    raise InputError(f"{path} is empty")
                if data:
                    yield _chunk(str(path), data, first_line, len(data))
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            chunk = _chunk(str(path), data, first_line, cut)
            yield chunk
            first_line += len(chunk)
            carry = data[cut:]


def _chunk(file: str, data: bytes, first_line: int, size: int) -> LineChunk:
    raw = np.frombuffer(data, dtype=np.uint8, count=size)
    newlines = np.flatnonzero(raw == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.append(newlines, size)
    if starts[-1] == size:  # the chunk ends with "\n": no line after it
        starts, ends = starts[:-1], ends[:-1]
    has_cr = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == 13)
    ends = ends - has_cr
    return LineChunk(file, data[:size], first_line, starts.astype(np.int64), ends.astype(np.int64))


@dataclass(frozen=True)
class SplitLines:
    """A chunk's lines split into fields: `rows` are lines with the right field count
    (`line` plus one String column per field, empty fields null), `rejects` the others."""

    rows: pl.DataFrame
    rejects: pl.DataFrame  # line, raw, reason


def split_fields(chunk: LineChunk, names: list[str], *, quoted: bool = False, header: bool = False) -> SplitLines:
    """Split comma-separated lines into exactly `len(names)` String fields.

    Lines that are blank, hold NUL bytes or invalid UTF-8, or have another field count
    become rejects with their reason; `header` leaves the chunk's first line out of both.
    `quoted`: fields may be double-quoted (RFC 4180 within one line); without it a quote
    is an ordinary character. Rows keep line order.
    """
    codes = chunk.problems()
    raw = np.frombuffer(chunk.data, dtype=np.uint8)
    commas = np.bincount(chunk._lines_of(np.flatnonzero(raw == 44)), minlength=len(chunk))
    codes[(codes == OK) & (commas + 1 != len(names))] = COLUMNS
    in_file = np.ones(len(chunk), dtype=bool)
    if header:
        in_file[0] = False
    special = np.zeros(len(chunk), dtype=bool)
    if quoted:  # lines with quotes go through the csv module: they are rare in event logs
        special[np.unique(chunk._lines_of(np.flatnonzero(raw == 34)))] = True
        special &= in_file & np.isin(codes, (OK, COLUMNS))
        codes[special] = OK
    keep = in_file & (codes == OK) & ~special
    schema = dict.fromkeys(names, pl.String)
    rows = _read_rows(chunk.joined(keep), schema).insert_column(0, pl.Series("line", chunk.line_numbers[keep]))
    if special.any():
        quoted_rows, quoted_bad = _split_quoted(chunk, np.flatnonzero(special), schema)
        rows = pl.concat([rows, quoted_rows]).sort("line")
        codes[quoted_bad] = COLUMNS
    reasons = {**LINE_REASONS, COLUMNS: f"wrong column count (expected {len(names)})"}
    return SplitLines(rows, chunk.rejects(np.flatnonzero(in_file & (codes != OK)), codes, reasons))


def _read_rows(data: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not data:
        return pl.DataFrame(schema=schema)
    rows = pl.read_csv(data, has_header=False, quote_char=None, schema=schema, missing_columns="insert")
    expected = data.count(b"\n") + (not data.endswith(b"\n"))
    if rows.height != expected:
        raise RuntimeError(f"CSV parser returned {rows.height} rows for {expected} lines")
    return rows


def _split_quoted(
    chunk: LineChunk, index: np.ndarray, schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, np.ndarray]:

    fields = [next(csv.reader([line]), []) for line in chunk.text(index)]
    good = np.array([len(row) == len(schema) for row in fields], dtype=bool)
    columns = list(zip(*[row for row, ok in zip(fields, good, strict=True) if ok], strict=True)) or [()] * len(schema)
    rows = pl.DataFrame(
        {name: pl.Series(values, dtype=pl.String) for name, values in zip(schema, columns, strict=True)}
    ).with_columns(pl.all().replace("", None))
    rows = rows.insert_column(0, pl.Series("line", chunk.line_numbers[index[good]]))
    return rows, index[~good]
