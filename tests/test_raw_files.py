"""Raw files become numbered lines: every physical line has its number, CRLF reads like LF,
bad bytes are flagged per line, and unreadable files are one-line InputErrors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.ingest import raw_files
from clickstream.pipeline.ingest.raw_files import BAD_UTF8, BLANK, NUL, OK, iter_line_chunks, split_fields

LINE_BYTES = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


def all_lines(path: Path, chunk_bytes: int) -> list[tuple[int, bytes]]:
    out = []
    for chunk in iter_line_chunks(path, chunk_bytes):
        for i, number in enumerate(chunk.line_numbers.tolist()):
            out.append((number, chunk.data[chunk.starts[i] : chunk.ends[i]]))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(LINE_BYTES, min_size=1, max_size=30),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    chunk_bytes=st.integers(1, 40),
)
def test_given_any_lines_when_chunked_then_each_physical_line_comes_once_with_its_number(
    tmp_path: Path, lines: list[bytes], crlf: bool, final_newline: bool, chunk_bytes: int
) -> None:
    text = (b"\r\n" if crlf else b"\n").join(lines) + ((b"\r\n" if crlf else b"\n") if final_newline else b"")
    if not text:
        return
    path = tmp_path / "f.dat"
    path.write_bytes(text)
    expected = text.split(b"\n")
    if expected[-1] == b"":  # a final newline ends the last line, it does not start one
        expected.pop()
    expected = [line.removesuffix(b"\r") for line in expected]
    expected[0] = expected[0].removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not part of line 1
    if expected == [b""] and not text.removeprefix(b"\xef\xbb\xbf"):
        return  # only a byte-order mark: an empty file
    assert all_lines(path, chunk_bytes) == list(enumerate(expected, start=1))


def test_given_blank_nul_and_latin1_lines_then_each_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "f.dat"
    path.write_bytes(b"ok\n\nnul\x00here\ncaf\xe9\n" + "utf8 é\n".encode())
    (chunk,) = iter_line_chunks(path)
    assert chunk.problems().tolist() == [OK, BLANK, NUL, BAD_UTF8, OK]
    assert chunk.texts(np.arange(5) == 3).to_list() == ["caf\ufffd"]


def test_given_a_gzip_file_then_its_lines_equal_the_plain_file(tmp_path: Path) -> None:
    text = b"".join(b"%d,x\n" % i for i in range(1000))
    (tmp_path / "a.dat").write_bytes(text)
    (tmp_path / "a.dat.gz").write_bytes(gzip.compress(text))
    assert all_lines(tmp_path / "a.dat.gz", 1000) == all_lines(tmp_path / "a.dat", 1000)


def test_given_no_memory_maps_then_a_plain_file_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.dat"
    path.write_bytes(b"".join(b"%d,x\n" % i for i in range(1000)))
    mapped = all_lines(path, 100)

    def no_map(*args: object, **kwargs: object) -> None:
        raise OSError("no memory maps on this file system")

    monkeypatch.setattr(raw_files.mmap, "mmap", no_map)
    assert all_lines(path, 100) == mapped


def test_given_a_file_cut_short_while_read_then_input_error_names_it(tmp_path: Path) -> None:
    path = tmp_path / "a.dat"
    path.write_bytes(b"".join(b"%d,x\n" % i for i in range(1000)))
    chunks = iter_line_chunks(path, 100)
    next(chunks)
    path.write_bytes(b"1,x\n")  # another process rewrites the file
    with pytest.raises(InputError, match=r"a\.dat: the file was truncated while being read"):
        list(chunks)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (gzip.compress(b"1,2\n" * 5000)[:-30], "truncated gzip"),
        (b"\x1f\x8b" + b"garbage" * 10, "gzip"),
        (gzip.compress(b""), "is empty"),
    ],
    ids=["missing", "empty", "truncated-gzip", "corrupt-gzip", "empty-gzip"],
)
def test_given_an_unreadable_file_then_input_error_names_it(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    path = tmp_path / "clicks.dat.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as error:
        list(iter_line_chunks(path))
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_given_a_directory_then_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        list(iter_line_chunks(tmp_path))


def test_given_quoted_fields_then_commas_inside_quotes_do_not_split(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b'a,b,c\n"x,1",2,3\n4,5\n6,,"7"\n')
    (chunk,) = iter_line_chunks(path)
    split = split_fields(chunk, ["a", "b", "c"], quoted=True, header=True)
    assert split.rows.rows() == [(2, "x,1", "2", "3"), (4, "6", None, "7")]
    assert split.rejects.rows() == [(3, "4,5", "wrong column count (expected 3)")]


def test_given_unquoted_fields_then_a_quote_is_an_ordinary_character(tmp_path: Path) -> None:
    path = tmp_path / "c.dat"
    path.write_bytes(b'1,"2\n3,4,5\n')
    (chunk,) = iter_line_chunks(path)
    split = split_fields(chunk, ["a", "b"])
    assert split.rows.rows() == [(1, "1", '"2')]
    assert split.rejects["line"].to_list() == [2]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(st.text("ab1", max_size=3), min_size=1, max_size=5), min_size=1, max_size=12))
def test_given_lines_of_any_field_count_then_exactly_those_of_the_right_count_are_rows(
    tmp_path: Path, lines: list[list[str]]
) -> None:
    # field counts that balance out (a line one short beside one a field long) must not pass for right
    text = "".join(",".join(fields) + "\n" for fields in lines)
    if not text.strip("\n"):
        return
    path = tmp_path / "f.dat"
    path.write_text(text)
    (chunk,) = iter_line_chunks(path)
    split = split_fields(chunk, ["a", "b", "c"])
    right = [(n, *(f or None for f in fields)) for n, fields in enumerate(lines, 1) if len(fields) == 3]
    assert split.rows.rows() == right
    wrong = {n for n, fields in enumerate(lines, 1) if len(fields) != 3 and ",".join(fields)}
    assert {
        n
        for n, reason in zip(split.rejects["line"], split.rejects["reason"], strict=True)
        if reason.startswith("wrong column count")
    } == wrong
