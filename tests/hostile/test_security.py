"""Security basics: no credential is written in the repository, the demo's UI commands bind to
127.0.0.1 and never print a password, models load only from the configured registry (no path
out of a run through `..`), and nothing given on the command line reaches outside the lake.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.errors import LakePathError, ModelNotFoundError
from clickstream.pipeline.core.lake import TABLE_SCHEMAS, Lake, dates_predicate
from clickstream.pipeline.orchestrate.demo import ui_commands

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDER_FILE = "docker/.env.example"  # documents every secret, with placeholder values only
PASSWORD = "s3cr3t-pw"  # this module's own dummy
DUMMIES = {"testing", "secret", PASSWORD}  # moto's and the tests' stand-in credentials
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:([^\s/@'\"]+)@"),
    "secret literal": re.compile(
        r"(?i)\b\w*(?:password|passwd|secret|token|access_key|api_key)\w*['\"]?(?:\s*=|:)\s*['\"]([^'\"\s]{4,})['\"]"
    ),
}
DEADLINE_S = 120
DAY = dt.date(2014, 4, 1)


def _repository_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore (what a commit would hold)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE_S,
    ).stdout.splitlines()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def _is_placeholder(value: str) -> bool:
    return value in DUMMIES or value.startswith(("$", "{", "change-me", "replace-with"))  # or a reference


def test_given_every_file_of_the_repository_then_none_holds_a_credential() -> None:
    found = []
    files = _repository_files()
    for path in files:
        if str(path.relative_to(REPO)) == PLACEHOLDER_FILE:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: images, Parquet samples
        for kind, pattern in CREDENTIAL_PATTERNS.items():
            for match in pattern.finditer(text):
                if not (match.groups() and _is_placeholder(match.group(1))):
                    found.append(f"{path.relative_to(REPO)}: {kind}: {match.group(0)[:60]}")

    assert len(files) > 50  # the listing really covers the repository
    assert found == []


def test_given_the_env_example_then_every_secret_in_it_is_a_placeholder() -> None:
    entries = dict(
        line.split("=", 1)
        for line in (REPO / PLACEHOLDER_FILE).read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    secrets = {name: value for name, value in entries.items() if re.search(r"PASSWORD|SECRET|KEY", name)}

    assert len(secrets) >= 3
    assert [name for name, value in secrets.items() if not _is_placeholder(value)] == []


def test_given_a_tracking_uri_with_a_password_then_the_demo_ui_commands_bind_to_localhost_without_it(
    settings: Settings,
) -> None:
    remote = replace(settings, tracking_uri=f"postgresql+psycopg2://analyst:{PASSWORD}@db.internal:5432/mlflow")

    airflow_ui, mlflow_ui = ui_commands(remote, settings.home / "airflow")

    assert PASSWORD not in airflow_ui and PASSWORD not in mlflow_ui
    assert 'MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI"' in airflow_ui
    assert mlflow_ui == 'mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port 5000'
    assert "AIRFLOW__API__HOST=127.0.0.1" in airflow_ui


def test_given_a_local_tracking_store_then_the_demo_prints_it_as_is_so_the_command_runs(settings: Settings) -> None:
    airflow_ui, mlflow_ui = ui_commands(settings, settings.home / "airflow")

    assert f"MLFLOW_TRACKING_URI={settings.tracking_uri}" in airflow_ui
    assert mlflow_ui.startswith(f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1 ")


def test_given_a_run_uri_climbing_out_of_its_run_then_the_model_is_refused_before_any_download(
    settings: Settings,
) -> None:
    from clickstream.models.registry.loading import load_model

    for path in ("..", "../../../../tmp/elsewhere/model", "model/../../other-run/artifacts/model"):
        with pytest.raises(ModelNotFoundError, match="is not a registry model URI") as error:
            load_model(settings, f"runs:/{'0' * 32}/{path}")
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("table", ["../events", "events/../../x", "/etc", "", "Events", "_config", "events/."])
def test_given_a_crafted_table_name_then_the_lake_refuses_it_and_writes_nothing(tmp_path: Path, table: str) -> None:
    lake = Lake(tmp_path / "lake")
    for operation in (
        lambda: lake.table_uri(table),
        lambda: lake.table(table),
        lambda: lake.read(table),
        lambda: lake.commit(table, _scores(DAY), replace=dates_predicate(DAY, DAY), stage="test"),
    ):
        with pytest.raises(LakePathError, match="unknown lake table"):
            operation()
    assert list(tmp_path.iterdir()) == []  # not even the lake root was made


def _scores(day: dt.date, rows: int = 3, tag: str = "committed") -> pl.DataFrame:
    """`rows` rows of the scores table on `day`, every column."""
    return pl.DataFrame(
        {
            "session_id": [f"s{n}" for n in range(rows)],
            "cookie_id": [None] * rows,
            "session_start": [dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)] * rows,
            "n_events": [1] * rows,
            "score": [0.5] * rows,
            "model_name": ["m"] * rows,
            "model_version": [tag] * rows,
            "scored_at": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * rows,
            "bucket": [0] * rows,
            "date": [day] * rows,
        },
        schema=TABLE_SCHEMAS["scores"],
    )


def test_given_parquet_files_dropped_into_a_table_folder_then_only_committed_files_are_read(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.commit("scores", _scores(DAY), replace=dates_predicate(DAY, DAY), stage="test")
    table = tmp_path / "lake" / "scores"
    stray = _scores(DAY + dt.timedelta(days=1), rows=5, tag="stray").drop("date", "bucket")
    for name in ("date=../x.parquet", "date=2014-04-01../x.parquet", "date=2014-04-02 /x.parquet", "x/x.parquet",
                 "date=2014-04-02/data.parquet", f"date={DAY}/stray.parquet", "stray.parquet", "../x.parquet"):
        path = table / name
        path.parent.mkdir(parents=True, exist_ok=True)
        stray.write_parquet(path)  # valid Parquet of the table's columns: read, it would count

    assert lake.dates("scores") == [DAY]
    assert lake.rows_per_date("scores") == {DAY: 3}
    assert lake.read("scores")["model_version"].to_list() == ["committed"] * 3
    assert lake.scan("scores").collect().height == 3
    assert [Path(path).parent.parent.name for path in lake.files("scores")] == [f"date={DAY}"]
    assert [Path(path).parent.name for path in lake.files("scores")] == ["bucket=0"]
    assert not {Path(path).name for path in lake.files("scores")} & {"x.parquet", "data.parquet", "stray.parquet"}


@pytest.mark.parametrize("value", ["../../etc", "2014-04-01/../..", "date=2014-04-01"])
def test_given_a_crafted_date_on_the_command_line_then_one_line_error_and_nothing_written(
    tmp_path: Path, value: str
) -> None:
    code = "from clickstream.pipeline.orchestrate.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "sequences", "--lake", str(tmp_path / "lake"), "--start", value],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--start" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
