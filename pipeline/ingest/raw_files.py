"""Raw log files as numbered lines: opening plain or gzip files, cutting them into chunks
of whole lines, flagging lines no format can read, and splitting delimited lines into
string fields.

Line numbers are physical: line 1 is the first line of the (decompressed) file, and every
line, blank or not, has its number. A line ends at "\\n"; a "\\r" just before it is dropped,
so CRLF files read like LF files. A UTF-8 byte-order mark at the start of a file is not
part of line 1. Work is vectorised over a chunk (numpy over the bytes, polars' CSV parser
over the fields), never per line, except for the rare lines that need it (quoted CSV fields).

Memory is bounded by the chunk, whatever the input: a chunk holds at most `CHUNK_BYTES`
bytes (or one line of at most `ReadLimits.max_line_bytes`) and at most `CHUNK_LINES` lines,
and a file may decompress to at most `ReadLimits.max_file_bytes`, a gzip stream past 16 MiB to
at most `max_gzip_ratio` times its compressed bytes (a bomb stops at its first block); past a
limit the read stops with an InputError naming the file and the setting.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import mmap
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import polars as pl
import pyarrow as pa

from clickstream.pipeline.core.errors import InputError

CHUNK_BYTES = 32 << 20  # numpy's byte scans run fastest on chunks that fit the CPU caches
CHUNK_LINES = 1 << 20  # bounds the per-line arrays of a chunk of short (e.g. blank) lines
GZIP_BLOCK = 1 << 20  # compressed bytes handed to zlib at a time
GZIP_FREE_BYTES = 16 << 20  # any gzip file may decompress to this much, whatever its ratio
BOM = b"\xef\xbb\xbf"

# Per-line problems found before any format looks at a line (code -> quarantine reason).
OK, BLANK, NUL, BAD_UTF8, COLUMNS = 0, 1, 2, 3, 4
LINE_REASONS = {BLANK: "blank line", NUL: "NUL byte", BAD_UTF8: "non-UTF-8 bytes"}


@dataclass(frozen=True)
class ReadLimits:
    """Caps on what one raw file may hold, so that no input (a gzip bomb, a file without
    newlines) can take unbounded memory or time. Settings: CLICKSTREAM_MAX_LINE_BYTES,
    CLICKSTREAM_MAX_FILE_BYTES."""

    max_line_bytes: int = 1 << 20
    max_file_bytes: int = 64 << 30  # decompressed
    # Past GZIP_FREE_BYTES, a gzip stream may give at most this many bytes per compressed byte
    # read so far: text logs compress 3-20 times, a bomb of repeated bytes 1000 times.
    max_gzip_ratio: int = 100


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

    def texts(self, keep: np.ndarray) -> pl.Series:
        """The kept lines (a bool mask) as a String series in line order; invalid UTF-8 is
        replaced by U+FFFD (one decode of all kept lines together, not one per line)."""
        data = self.joined(keep)
        if data and not data.endswith(b"\n"):
            data += b"\n"
        if not _is_utf8(data):
            data = data.decode("utf-8", "replace").encode()  # U+FFFD never holds a "\n"
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        offsets = np.concatenate(([0], newlines + 1)).astype(np.int64)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        array = pa.Array.from_buffers(pa.large_string(), len(newlines), buffers)
        return pl.Series("line_text", array, dtype=pl.String).str.strip_suffix("\n")

    def problems(self) -> np.ndarray:
        """uint8 code per line: OK, BLANK, NUL or BAD_UTF8 (see LINE_REASONS)."""
        codes = np.zeros(len(self), dtype=np.uint8)
        codes[self.ends == self.starts] = BLANK
        raw = np.frombuffer(self.data, dtype=np.uint8)
        if b"\0" in self.data:  # a byte search, far cheaper than indexing bytes that are not there
            codes[self._lines_of(np.flatnonzero(raw == 0))] = NUL
        if not self.data.isascii() and not _is_utf8(self.data):
            for i in np.unique(self._lines_of(np.flatnonzero(raw >= 0x80))).tolist():
                if codes[i] == OK and not _is_utf8(self.data[self.starts[i] : self.ends[i]]):
                    codes[i] = BAD_UTF8
        return codes

    def rejects(self, index: np.ndarray, codes: np.ndarray, reasons: dict[int, str] = LINE_REASONS) -> pl.DataFrame:
        """Quarantine rows (line, raw, reason) for the lines at `index` (ascending), reason
        `reasons[codes[i]]`."""
        keep = np.zeros(len(self), dtype=bool)
        keep[index] = True
        reason = pl.Series(codes[index], dtype=pl.UInt8).replace_strict(
            list(reasons), list(reasons.values()), return_dtype=pl.String
        )
        return pl.DataFrame({"line": self.line_numbers[index], "raw": self.texts(keep), "reason": reason})

    def joined(self, keep: np.ndarray) -> bytes:
        """The kept lines' text, each followed by "\\n" (CR of CRLF dropped)."""
        if not keep.any():
            return b""
        if keep.all() and b"\r" not in self.data:
            return self.data
        raw = np.frombuffer(self.data, dtype=np.uint8)
        cr = self.ends[self.ends < len(raw)]
        cr = cr[raw[cr] == 13]
        lengths = np.diff(np.append(self.starts, len(raw)))
        mask = np.repeat(keep, lengths)
        mask[cr] = False
        return raw[mask].tobytes()

    def header(self) -> list[str]:
        """The first line as CSV column names (quotes and surrounding spaces removed).

        Raises InputError when the chunk does not start the file or the line is no header.
        """
        if self.first_line != 1 or self.problems()[0] != OK:
            raise InputError(f"{self.file}: line 1 is not a CSV header")
        first = np.zeros(len(self), dtype=bool)
        first[0] = True
        return [name.strip() for name in next(csv.reader([self.texts(first)[0]]))]

    def _lines_of(self, offsets: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, offsets, side="right") - 1


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_file(path: Path) -> None:
    """InputError naming `path` unless it is a regular file this process can reach: missing,
    a symbolic link loop, a folder on the way that cannot be searched, a directory..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied (a folder on its path cannot be searched)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop (a link on its path points back to itself)") from None
        if error.errno == errno.ENOTDIR:
            raise InputError(f"{path}: no such file (a part of its path is not a folder)") from None
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path} is not a regular file")


class _Stream(Protocol):
    def read(self, size: int) -> bytes: ...


class GzipError(Exception):
    """The compressed stream is corrupt or ends early; the message says where."""


class _Gunzip:
    """A gzip file's decompressed bytes (all members), read block by block with zlib so that
    no call decompresses more than it returns. Bytes decompressed before an error are
    returned first; the GzipError (naming the compressed offset) comes with the next read."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._input = b""  # compressed bytes read but not yet decompressed
        self._read = 0  # compressed bytes read from the file
        self._member: zlib._Decompress | None = None
        self._error: GzipError | None = None

    @property
    def consumed(self) -> int:
        """Compressed bytes decompressed so far."""
        return self._read - len(self._input)

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        have = 0
        while have < size and self._error is None:
            try:
                part = self._next(size - have)
            except GzipError as error:
                self._error = error
                break
            if part is None:
                break
            parts.append(part)
            have += len(part)
        if not have and self._error is not None:
            raise self._error
        return b"".join(parts)

    def _next(self, size: int) -> bytes | None:
        """Up to `size` decompressed bytes (possibly none); None at the clean end of the file."""
        if not self._input:
            self._input = self._handle.read(GZIP_BLOCK)
            self._read += len(self._input)
            if not self._input:
                if self._member is not None:
                    raise GzipError(f"truncated gzip: the compressed data ends at byte {self._read:,} mid-stream")
                return None
        if self._member is None:
            self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = self._member.decompress(self._input, size)
        except zlib.error as error:
            at = self._read - len(self._input)
            raise GzipError(f"corrupt gzip data at or after compressed byte {at:,} ({error})") from None
        if self._member.eof:
            self._input, self._member = self._member.unused_data, None
        else:
            self._input = self._member.unconsumed_tail
        return out


class _Mapped:
    """A plain file's bytes through a memory map. A read ends just after the last line break it
    reaches, so that the line cutter does not join a block's last line with the next block: one
    copy of the file's bytes instead of two (the read's and the join's). Pages already read leave
    the process's memory."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._fd = handle.fileno()
        size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) if size else None
        self._at = self._released = 0  # bytes read; bytes whose pages were given back

    def read(self, size: int) -> bytes:
        if self._map is None or self._at == len(self._map):
            return b""
        if os.fstat(self._fd).st_size < len(self._map):  # reading past its end would kill the process
            raise OSError("the file was truncated while being read")
        end = min(self._at + size, len(self._map))
        if end < len(self._map):
            end = self._map.rfind(b"\n", self._at, end) + 1 or end
        block = self._map[self._at : end]
        done = end - end % mmap.PAGESIZE
        if done > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
            self._released = done
        self._at = end
        return block

    def close(self) -> None:
        if self._map is not None:
            self._map.close()


@contextlib.contextmanager
def open_raw(path: Path) -> Iterator[_Stream]:
    """The file's bytes, decompressed when its name ends in `.gz`.

    Raises InputError naming the file when it is missing, a directory or unreadable.
    """
    check_file(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror})") from None
    with handle:
        if path.suffix == ".gz":
            yield _Gunzip(handle)
            return
        try:
            mapped = _Mapped(handle)
        except OSError:  # a file system without memory maps: plain reads
            yield handle
            return
        try:
            yield mapped
        finally:
            mapped.close()


def iter_blocks(
    path: Path, limits: ReadLimits, block_bytes: int = CHUNK_BYTES, where: Callable[[int], str] | None = None
) -> Iterator[bytes]:
    """The file's (decompressed) bytes in order, in blocks of at most `block_bytes`.

    Raises InputError naming the file when it cannot be opened, for a corrupt or truncated
    gzip stream (saying where: `where(decompressed bytes so far)`, by default that offset)
    and past `limits.max_file_bytes`.
    """
    total = 0
    with open_raw(path) as stream:
        while True:
            try:
                block = stream.read(block_bytes)
            except (GzipError, OSError) as error:
                at = where(total) if where else f"decompressed byte {total:,}"
                raise InputError(f"{path}: {error}, {at}") from None
            if not block:
                return
            total += len(block)
            if total > limits.max_file_bytes:
                raise InputError(
                    f"{path}: more than {limits.max_file_bytes:,} bytes (decompressed), the per-file limit "
                    "CLICKSTREAM_MAX_FILE_BYTES; split the file or raise the limit"
                )
            if isinstance(stream, _Gunzip) and total > max(GZIP_FREE_BYTES, limits.max_gzip_ratio * stream.consumed):
                raise InputError(
                    f"{path}: {stream.consumed:,} compressed bytes gave {total:,}, more than {limits.max_gzip_ratio} "
                    "times as many, the limit CLICKSTREAM_MAX_GZIP_RATIO: a gzip bomb? raise it if the file is genuine"
                )
            yield block


def iter_line_chunks(
    path: Path, chunk_bytes: int = CHUNK_BYTES, limits: ReadLimits = ReadLimits()
) -> Iterator[LineChunk]:
    """The file's lines in order, in chunks of at most `chunk_bytes` (or one whole line) and
    `CHUNK_LINES` lines.

    Raises InputError naming the file for an empty file, a corrupt or truncated gzip stream
    (with the last whole line and the decompressed offset before the damage), a line longer
    than `limits.max_line_bytes` or a file past its decompressed size limit (`iter_blocks`).
    """
    carry, first_line = b"", 1  # carry: the start of a line no block so far has ended

    def where(total: int) -> str:
        last = first_line - 1 + carry.count(b"\n")
        return f"after line {last:,} (decompressed byte {total:,})"

    bom_checked = False
    for block in iter_blocks(path, limits, chunk_bytes, where):
        if not bom_checked:
            block, carry = carry + block, b""
            if len(block) < len(BOM):
                carry = block
                continue
            block, bom_checked = block.removeprefix(BOM), True
        end = block.rfind(b"\n") + 1
        if end:  # the lines that end in this block, with the start of the first one carried over
            whole = end == len(block) and not carry  # as a plain file's blocks are: no copy
            lines, carry = block if whole else b"".join((carry, memoryview(block)[:end])), block[end:]
            for chunk in _chunks(str(path), lines, first_line, limits):
                yield chunk
                first_line += len(chunk)
        else:
            carry += block
        if len(carry) > limits.max_line_bytes:
            raise _too_long(str(path), first_line, limits)
    if first_line == 1 and not carry:
        raise InputError(f"{path} is empty")
    if carry:
        yield from _chunks(str(path), carry, first_line, limits)


def _chunks(file: str, data: bytes, first_line: int, limits: ReadLimits) -> Iterator[LineChunk]:
    """The lines of `data` (whole lines, the last one possibly without its "\\n"), CHUNK_LINES at most per chunk."""
    while data:
        newlines = _newlines(data)
        size = int(newlines[-1]) + 1 if len(newlines) else len(data)
        chunk = _chunk(file, data, first_line, newlines, size, limits)
        yield chunk
        first_line, data = first_line + len(chunk), data[size:]


def _newlines(data: bytes) -> np.ndarray:
    """Offsets of the first CHUNK_LINES "\\n" of `data`, found 1 MiB at a time so that no index of
    more lines is built."""
    raw, found, seen, step = np.frombuffer(data, dtype=np.uint8), [], 0, 1 << 20
    for start in range(0, len(raw), step):
        found.append(np.flatnonzero(raw[start : start + step] == 10) + start)
        seen += len(found[-1])
        if seen >= CHUNK_LINES:
            break
    return np.concatenate(found)[:CHUNK_LINES]


def _chunk(file: str, data: bytes, first_line: int, newlines: np.ndarray, size: int, limits: ReadLimits) -> LineChunk:
    """The lines of `data[:size]`, whose "\\n" are at `newlines` (at most CHUNK_LINES of them)."""
    raw = np.frombuffer(data, dtype=np.uint8, count=size)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.append(newlines, size)
    if starts[-1] == size:  # the chunk ends with "\n": no line after it
        starts, ends = starts[:-1], ends[:-1]
    longest = int(np.argmax(ends - starts))
    if ends[longest] - starts[longest] > limits.max_line_bytes:
        raise _too_long(file, first_line + longest, limits)
    has_cr = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == 13)
    return LineChunk(file, data[:size] if size < len(data) else data, first_line, starts, ends - has_cr)


def _too_long(file: str, line: int, limits: ReadLimits) -> InputError:
    return InputError(
        f"{file}: line {line:,} is longer than {limits.max_line_bytes:,} bytes, the per-line limit "
        "CLICKSTREAM_MAX_LINE_BYTES (a file without line breaks, or the wrong file?)"
    )


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
    in_file = np.ones(len(chunk), dtype=bool)
    if header:
        in_file[0] = False
    schema = dict.fromkeys(names, pl.String)
    if (codes == OK).all() and not (quoted and b'"' in chunk.data):
        # the usual chunk: if it holds exactly the commas of all-good lines, either every line has the
        # right field count or one has too many, which the parser refuses; no per-line count is needed
        rows = _read_uniform_rows(chunk, raw, in_file, schema)
        if rows is not None:
            return SplitLines(rows, chunk.rejects(np.empty(0, dtype=np.int64), codes))
    comma_offsets = np.flatnonzero(raw == 44)
    commas = np.diff(np.searchsorted(comma_offsets, chunk.starts), append=len(comma_offsets))  # per line
    codes[(codes == OK) & (commas + 1 != len(names))] = COLUMNS
    special = np.zeros(len(chunk), dtype=bool)
    if quoted:  # lines with quotes go through the csv module: they are rare in event logs
        special[np.unique(chunk._lines_of(np.flatnonzero(raw == 34)))] = True
        special &= in_file & np.isin(codes, (OK, COLUMNS))
        codes[special] = OK
    keep = in_file & (codes == OK) & ~special
    rows = _read_rows(chunk.joined(keep), schema, int(keep.sum())).insert_column(
        0, pl.Series("line", chunk.line_numbers[keep])
    )
    if special.any():
        quoted_rows, quoted_bad = _split_quoted(chunk, np.flatnonzero(special), schema)
        rows = pl.concat([rows, quoted_rows]).sort("line")
        codes[quoted_bad] = COLUMNS
    reasons = {**LINE_REASONS, COLUMNS: f"wrong column count (expected {len(names)})"}
    return SplitLines(rows, chunk.rejects(np.flatnonzero(in_file & (codes != OK)), codes, reasons))


def _read_uniform_rows(
    chunk: LineChunk, raw: np.ndarray, in_file: np.ndarray, schema: dict[str, pl.DataType]
) -> pl.DataFrame | None:
    """The rows of a chunk whose lines all have `len(schema)` fields, or None when some may not."""
    if int(np.count_nonzero(raw == 44)) != len(chunk) * (len(schema) - 1):
        return None
    try:
        rows = _read_rows(chunk.joined(in_file), schema, int(in_file.sum()))
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError):  # a line with too many fields
        return None
    return rows.insert_column(0, pl.Series("line", chunk.line_numbers[in_file]))


def _read_rows(data: bytes, schema: dict[str, pl.DataType], lines: int) -> pl.DataFrame:
    """The fields of `lines` comma-separated lines without quoting (short lines padded with nulls)."""
    if not data:
        return pl.DataFrame(schema=schema)
    rows = pl.read_csv(data, has_header=False, quote_char=None, schema=schema, missing_columns="insert")
    if rows.height != lines:
        raise RuntimeError(f"CSV parser returned {rows.height} rows for {lines} lines")
    return rows


def _split_quoted(
    chunk: LineChunk, index: np.ndarray, schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, np.ndarray]:

    keep = np.zeros(len(chunk), dtype=bool)
    keep[index] = True
    fields = [next(csv.reader([line]), []) for line in chunk.texts(keep).to_list()]
    good = np.array([len(row) == len(schema) for row in fields], dtype=bool)
    columns = list(zip(*[row for row, ok in zip(fields, good, strict=True) if ok], strict=True)) or [()] * len(schema)
    rows = pl.DataFrame(
        {name: pl.Series(values, dtype=pl.String) for name, values in zip(schema, columns, strict=True)}
    ).with_columns(pl.all().replace("", None))
    rows = rows.insert_column(0, pl.Series("line", chunk.line_numbers[index[good]]))
    return rows, index[~good]
