"""A command whose prerequisite is missing says so in one line, naming the lake or tracking
store it looked at, before it imports torch or MLflow and without creating any state."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_process import run_cli
from fixtures import synthetic_sequences, write_sequences

from clickstream.pipeline.core.lake import Lake


def _contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working folder: the default state folder (.clickstream) would appear in it."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    ("args", "table"),
    [
        (["train"], "sequences"),
        (["train", "--start", "2014-04-01", "--end", "2014-04-09", "--promote"], "sequences"),
        (["score"], "sequences"),
        (["scores"], "scores"),
        (["sequences"], "events"),
        (["report"], "scores"),
    ],
)
def test_given_an_empty_lake_then_one_line_naming_it_and_nothing_heavy_or_new(
    workdir: Path, tmp_path: Path, args: list[str], table: str
) -> None:
    lake = tmp_path / "empty-lake"

    done = run_cli(*args, "--lake", str(lake), cwd=workdir)

    assert done.code == 2
    assert f"no {table}/ partitions" in done.error_line and str(lake) in done.error_line
    assert done.heavy == []
    assert _contents(workdir) == [] and not lake.exists()


@pytest.mark.parametrize(
    "args", [["score"], ["score", "--model", "models:/clickstream-buy-intent/3"], ["session", "s1"]]
)
def test_given_sequences_but_no_tracking_store_then_one_line_naming_the_store_and_none_created(
    workdir: Path, tmp_path: Path, args: list[str]
) -> None:
    lake = tmp_path / "lake"
    write_sequences(Lake(lake), synthetic_sequences(sessions=50, days=1))
    store = tmp_path / "state" / "mlflow.db"

    done = run_cli(*args, "--lake", str(lake), cwd=workdir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})

    assert done.code == 2
    assert f"sqlite:///{store}" in done.error_line and "does not exist yet" in done.error_line
    assert done.heavy == []
    assert not store.exists() and not store.parent.exists() and _contents(workdir) == []


def test_given_the_default_store_and_no_training_yet_then_score_names_it(workdir: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_sequences(Lake(lake), synthetic_sequences(sessions=50, days=1))

    done = run_cli("score", "--lake", str(lake), cwd=workdir, env={"CLICKSTREAM_HOME": str(tmp_path / "home")})

    assert done.code == 2 and str(tmp_path / "home" / "mlflow.db") in done.error_line
    assert done.heavy == [] and not (tmp_path / "home").exists()
