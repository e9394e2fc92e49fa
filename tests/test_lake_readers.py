"""docs/analysts.md, "Read the lake from your own tools", run for real: its DuckDB snippet (the
`deltalake` package's file list of a version, read by DuckDB itself) and its polars snippet, over a
small scored lake whose scores are full of ties, give every session the same decile, now and at an
earlier version.

Not run here: DuckDB's `delta` extension (DuckDB downloads it on first use, and this machine reaches no
extension repository) and Spark (no JVM). Both run the same decile query text, which runs here
through DuckDB.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from lake_writers import StandInScorer

from clickstream.pipeline.core.config import load_settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.scoring import score_with

DOC = Path(__file__).resolve().parents[1] / "docs" / "analysts.md"
SECTION = "## Read the lake from your own tools\n"


def _blocks(language: str) -> list[str]:
    """The section's fenced code blocks in `language`, in order."""
    text = DOC.read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def _block(language: str, marker: str) -> str:
    (found,) = [block for block in _blocks(language) if marker in block]
    return found


DECILES = _block("sql", "ntile(10)")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Three days of sessions (not a multiple of 10) in two buckets, scored by stand-in model 1 and then
    again by 2: seven distinct scores among hundreds of sessions, and two versions of `scores`."""
    root = tmp_path_factory.mktemp("readers")
    settings = load_settings(lake=str(root / "lake"), home=root / "state", environ={"CLICKSTREAM_BUCKETS": "2"})
    days = write_sequences(Lake(settings.lake, settings.buckets), synthetic_sequences(sessions=607, days=3))
    for model in ("1", "2"):
        score_with(settings, StandInScorer(model), days)
    return Lake(settings.lake)


def _run(snippet: str, lake: Lake, version: int | None) -> pl.DataFrame:
    """Run a snippet of the section as the doc sets it up (`lake`, `version`, the decile query); its `deciles`."""
    namespace: dict[str, Any] = {"lake": str(lake.root), "version": version, "DECILES": DECILES}
    exec(compile(snippet, str(DOC), "exec"), namespace)
    return namespace["deciles"].select("session_id", "score", "decile").sort("session_id")


def _duckdb(lake: Lake, version: int | None = None) -> pl.DataFrame:
    return _run(_block("python", "read_parquet"), lake, version)


def _polars(lake: Lake, version: int | None = None) -> pl.DataFrame:
    return _run(_block("python", "pl.scan_delta"), lake, version)


def _ntile(frame: pl.DataFrame, descending_ids: bool = False) -> pl.DataFrame:
    """Deciles as SQL's ntile(10) deals them, computed apart from both snippets: sessions by score,
    best first, ties by session id; the first n mod 10 deciles one session larger."""
    ordered = frame.sort(["score", "session_id"], descending=[True, descending_ids])
    sizes = [len(part) for part in np.array_split(np.arange(ordered.height), 10)]
    return ordered.with_columns(decile=pl.Series(np.repeat(np.arange(1, 11), sizes))).sort("session_id")


def test_the_snippets_start_from_a_lake_root_and_a_version() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_block("python", 'lake = "'), str(DOC), "exec"), namespace)
    assert namespace["lake"] == "/data/lake" and namespace["version"] is None


def test_given_tied_scores_then_duckdb_and_polars_give_every_session_the_same_decile(lake: Lake) -> None:
    from_duckdb, from_polars = _duckdb(lake), _polars(lake)

    assert from_duckdb.height == lake.read("scores").height == from_polars.height > 10 * 7
    assert from_polars.height % 10 != 0  # deciles of unequal sizes, as ntile deals them
    assert from_duckdb.with_columns(pl.col("decile").cast(pl.Int64)).equals(
        from_polars.with_columns(pl.col("decile").cast(pl.Int64))
    )
    expected = _ntile(from_polars.drop("decile"))
    assert from_polars.with_columns(pl.col("decile").cast(pl.Int64)).equals(expected)
    # the data is one where the tie-break decides: tied sessions straddle deciles, and breaking the
    # ties the other way round moves sessions between them
    straddling = from_polars.group_by("score").agg(pl.col("decile").n_unique()).filter(pl.col("decile") > 1)
    assert straddling.height > 0
    assert not _ntile(from_polars.drop("decile"), descending_ids=True).equals(expected)


def test_given_an_earlier_version_then_both_read_the_table_as_it_was(lake: Lake) -> None:
    earlier = lake.history("scores")[1].version  # before model 2 scored the days again

    then_duckdb, then_polars = _duckdb(lake, earlier), _polars(lake, earlier)

    assert then_duckdb.with_columns(pl.col("decile").cast(pl.Int64)).equals(
        then_polars.with_columns(pl.col("decile").cast(pl.Int64))
    )
    now = _polars(lake)
    shift = now.join(then_polars, on="session_id", suffix="_then").select(pl.col("score") - pl.col("score_then"))
    assert then_polars.height == now.height and np.allclose(shift.to_series().to_numpy(), 0.1)  # model 1 then, 2 now
