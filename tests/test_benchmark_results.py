"""benchmarks/results.py: a rewrite replaces a section's figures but keeps its hand-written notes,
and the ratio table shows each benchmark's last two runs."""

from __future__ import annotations

import json

import pytest

from benchmarks import results
from benchmarks.results import Ratio, record


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(results, "RATIOS", tmp_path / "ratios.json")
    return tmp_path


def _ratio(value: float) -> Ratio:
    return Ratio(
        ours="ingest", peer="polars parse", ours_figure="1 CPU-s", peer_figure="2 CPU-s", ratio=value, target=0.67
    )


def test_given_notes_in_a_section_when_its_benchmark_runs_again_then_the_figures_change_and_the_notes_stay(files):
    record("ingest", "figure 1")
    text = results.RESULTS.read_text()
    notes = "<!-- ingest:notes:start -->\nWhere the time goes: the write.\n<!-- ingest:notes:end -->"
    results.RESULTS.write_text(text.replace("figure 1", f"figure 1\n\n{notes}"))

    record("ingest", "figure 2")
    record("other", "figure 3")

    text = results.RESULTS.read_text()
    assert "figure 1" not in text
    ingest = text[text.index("<!-- ingest:start -->") : text.index("<!-- ingest:end -->")]
    assert "figure 2" in ingest
    assert ingest.index("figure 2") < ingest.index(notes)
    assert text.count("Where the time goes") == 1


def test_given_three_runs_then_the_ratio_table_holds_the_last_two_newest_first(files):
    results.RATIOS.write_text(json.dumps({"ingest": {"stamp": "old", "machine": "m", "load": 1.0, "rows": []}}))
    for value in (0.5, 0.6, 0.7):
        record("ingest", "body", [_ratio(value)])

    stored = json.loads(results.RATIOS.read_text())["ingest"]
    table = results.RESULTS.read_text()
    assert [run["rows"][0]["ratio"] for run in stored] == [0.7, 0.6]
    assert "**0.70x**" in table and "**0.60x**" in table and "**0.50x**" not in table
    assert table.index("**0.70x**") < table.index("**0.60x**")
    assert "0.67x: NOT met" in table
