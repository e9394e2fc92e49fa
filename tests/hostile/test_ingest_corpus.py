"""The bad-input corpus (tests/bad_inputs/corpus.py) through the real ingest: each case is
either a one-line InputError naming the file, with nothing written to events/, or exactly its
quarantine reasons with every row accounted for."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from bad_inputs.corpus import CASES, Case

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import InputError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.ingest import ingest_files

TODAY = dt.date(2015, 1, 1)


def write(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_given_a_bad_input_then_a_clear_error_or_its_quarantine_reason(
    settings: Settings, tmp_path: Path, case: Case
) -> None:
    paths = write(tmp_path / "in", case.files)
    buys = [paths[name] for name in case.extra.get("buys", [])]
    files = [path for name, path in paths.items() if path not in buys]
    if case.error:
        with pytest.raises(InputError, match=case.error) as error:
            ingest_files(settings, case.fmt, files, buys, ingestion_date=TODAY)
        assert "\n" not in str(error.value) and any(str(p) in str(error.value) for p in files)
        assert Lake(settings.lake).dates("events") == []
        return
    summary = ingest_files(settings, case.fmt, files, buys, ingestion_date=TODAY)
    assert summary.rows_read == summary.rows_written + summary.quarantined + summary.duplicates
    assert summary.duplicates == case.duplicates
    quarantine = Lake(settings.lake).scan("quarantine")
    reasons = set() if quarantine is None else set(quarantine.collect()["reason"])
    assert reasons == case.reasons
