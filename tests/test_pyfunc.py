"""The registered model as MLflow serves it: `mlflow.pyfunc.load_model(...).predict` in a fresh
process (also one with foreign top-level `models`/`features`/`pipeline` packages first on
sys.path) and `mlflow models serve` give `clickstream score`'s scores; both input forms
(sessions as in sequences/, raw events) and every timestamp form give the same scores; input
the model cannot read is refused in one line. The model is logged as code with only the modules
scoring runs (no orchestration, training, ingest or Airflow), its requirements pin what those
import, and versions logged as a pickled object still load."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from clickstream.features.sequences import build_sequences, read_sequences
from clickstream.models.bundle import ModelBundle
from clickstream.models.pyfunc import BuyIntentModel, score_input
from clickstream.models.registry import packaging
from clickstream.models.registry.loading import load_model
from clickstream.models.registry.packaging import MODEL_CODE, code_package, requirements, served_code
from clickstream.models.registry.store import experiment_id, tracking_client
from clickstream.pipeline.core.config import Settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.ingest.ingest import ingest_files
from clickstream.pipeline.serve.scoring import score_dates
from clickstream.pipeline.synthetic.generate import generate_logs

CHAMPION = "models:/clickstream-buy-intent@champion"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
# modules that scoring never needs: a loaded model importing one ships or reaches too much
NOT_SERVED = (
    "airflow",
    "clickstream.pipeline.orchestrate",
    "clickstream.models.training",
    "clickstream.pipeline.ingest",
)
_PREDICT = """
import json, sys
import mlflow, mlflow.pyfunc, polars as pl
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
pl.from_pandas(model.predict(pl.read_parquet(sys.argv[3]).to_pandas())).write_parquet(sys.argv[4])
loaded = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
import clickstream.models.pyfunc
try:
    import models
except ImportError:
    models = None
report = {
    "pyfunc": clickstream.models.pyfunc.__file__,
    "marker": getattr(models, "MARKER", None),
    "flavor": model.metadata.flavors["python_function"],
    "modules": {name: path for name, path in loaded.items() if name.startswith(("clickstream", "airflow"))},
}
with open(sys.argv[5], "w") as out:
    json.dump(report, out)
"""


@pytest.fixture
def lake_sessions(champion_settings: Settings) -> tuple[Settings, pl.DataFrame]:
    """1,000 sessions over two days in the champion's private lake, and what `clickstream score` gave them."""
    lake = Lake(champion_settings.lake)
    write_sequences(lake, synthetic_sequences(sessions=1000, days=2, seed=21))
    score_dates(champion_settings, dt.date(2014, 4, 1), dt.date(2014, 4, 2))
    scores = lake.scan("scores").select("session_id", "score").collect()
    return champion_settings, read_sequences(lake, None, None).join(scores, on="session_id", maintain_order="left")


@pytest.fixture
def champion(champion_settings: Settings) -> ModelBundle:
    return load_model(champion_settings, device="cpu")


def _predict_in_fresh_process(
    settings: Settings, uri: str, sessions: pl.DataFrame, tmp_path: Path, path: list[Path]
) -> tuple[pl.DataFrame, dict]:
    """(the output of the pyfunc at `uri` for `sessions`, what the process imported and loaded) from a
    fresh Python with `path` first on sys.path."""
    files = ("sessions.parquet", "out.parquet", "report.json")
    sessions.write_parquet(tmp_path / files[0])
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT, settings.tracking_uri, uri, *(str(tmp_path / n) for n in files)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return pl.read_parquet(tmp_path / files[1]), json.loads((tmp_path / files[2]).read_text())


@pytest.mark.slow
def test_given_lake_sessions_when_predicted_by_the_pyfunc_in_a_fresh_process_then_scores_equal_clickstream_score(
    lake_sessions: tuple[Settings, pl.DataFrame], tmp_path: Path
) -> None:
    settings, sessions = lake_sessions

    predicted, _ = _predict_in_fresh_process(settings, CHAMPION, sessions.drop("score"), tmp_path, [])

    assert predicted.columns == ["session_id", "score"] and predicted.height == 1000
    assert predicted["session_id"].to_list() == sessions["session_id"].to_list()
    np.testing.assert_allclose(predicted["score"].to_numpy(), sessions["score"].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_given_foreign_models_features_pipeline_packages_first_on_sys_path_then_the_model_loads_its_own_code(
    lake_sessions: tuple[Settings, pl.DataFrame], tmp_path: Path
) -> None:
    settings, sessions = lake_sessions
    foreign = tmp_path / "foreign"
    for name in ("models", "features", "pipeline"):
        (foreign / name).mkdir(parents=True)
        (foreign / name / "__init__.py").write_text(f"MARKER = 'foreign {name}'\n")
    sample = sessions.head(200)

    predicted, loaded = _predict_in_fresh_process(settings, CHAMPION, sample.drop("score"), tmp_path, [foreign])

    assert loaded["marker"] == "foreign models"
    assert "/artifacts/code/clickstream/models/pyfunc.py" in loaded["pyfunc"]
    np.testing.assert_allclose(predicted["score"].to_numpy(), sample["score"].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_given_the_champion_loaded_in_a_fresh_process_then_it_runs_only_its_own_scoring_code_no_pickle(
    lake_sessions: tuple[Settings, pl.DataFrame], tmp_path: Path
) -> None:
    settings, sessions = lake_sessions
    sample = sessions.head(50)

    predicted, loaded = _predict_in_fresh_process(settings, CHAMPION, sample.drop("score"), tmp_path, [])

    flavor = loaded["flavor"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert Path(flavor["model_code_path"]).name == "pyfunc_code.py"
    assert not [name for name in loaded["modules"] if name.startswith(NOT_SERVED)]
    files = {name: path for name, path in loaded["modules"].items() if path is not None}
    assert {"clickstream.models.pyfunc", "clickstream.models.bundle", "clickstream.features.sequences"} <= set(files)
    outside = {name: path for name, path in files.items() if "/artifacts/code/clickstream/" not in path}
    assert not outside, f"imported from outside the model's code: {outside}"
    np.testing.assert_allclose(predicted["score"].to_numpy(), sample["score"].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_given_a_version_logged_as_a_pickled_object_with_the_whole_project_then_it_still_loads_and_scores(
    lake_sessions: tuple[Settings, pl.DataFrame], settings: Settings, tmp_path: Path
) -> None:
    champion_settings, sessions = lake_sessions
    tracking_client(champion_settings)
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "champion")))
    specs = Model.load(str(local / "MLmodel")).flavors["python_function"]["artifacts"]
    whole_project = tmp_path / "code" / "clickstream"  # the code paths of versions logged that way
    for folder in ("pipeline", "features", "models"):
        shutil.copytree(REPO / folder, whole_project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    client = tracking_client(settings)
    with mlflow.start_run(experiment_id=experiment_id(client, settings)):
        legacy = mlflow.pyfunc.log_model(
            name="model",
            python_model=BuyIntentModel(),
            artifacts={name: str(local / spec["path"]) for name, spec in specs.items()},
            code_paths=[str(whole_project)],
            pip_requirements=["mlflow"],
        )
    sample = sessions.head(100)

    predicted, loaded = _predict_in_fresh_process(settings, legacy.model_uri, sample.drop("score"), tmp_path, [])

    assert loaded["flavor"]["loader_module"] == "mlflow.pyfunc.model" and "python_model" in loaded["flavor"]
    np.testing.assert_allclose(predicted["score"].to_numpy(), sample["score"].to_numpy(), rtol=0, atol=1e-6)


def test_given_the_model_code_then_its_code_paths_hold_the_scoring_modules_and_nothing_else(tmp_path: Path) -> None:
    code = served_code()
    package = code_package(code.keys() - {MODEL_CODE}, tmp_path)

    assert MODEL_CODE in code
    shipped = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    assert {"models/pyfunc.py", "models/bundle.py", "models/lstm.py", "features/sequences.py"} <= shipped
    assert {"pipeline/core/config.py", "pipeline/core/schemas.py", "features/__init__.py"} <= shipped
    others = ("pipeline/orchestrate/", "pipeline/ingest/", "pipeline/serve/", "pipeline/synthetic/", "models/training/")
    assert not [path for path in shipped if path.startswith(others)]
    assert not {"models/registry/__init__.py", "models/pyfunc_code.py"} & shipped
    assert all((package / path).parent.joinpath("__init__.py").is_file() for path in shipped)
    assert all((package / path).read_bytes() == (REPO / path).read_bytes() for path in shipped)


def test_given_imports_of_every_kind_then_the_served_code_follows_exactly_those_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = {
        "models/__init__.py": "",
        "models/entry.py": "from clickstream.models import a\n",
        "models/a.py": (
            "from typing import TYPE_CHECKING\nimport numpy as np\nfrom . import b\n"
            "if TYPE_CHECKING:\n    from clickstream.models import typed\nelse:\n    import clickstream.models.other\n"
            "def later():\n    from ..pipeline.core.c import name\n"
        ),
        "models/b.py": "from clickstream.models.a import np\n",
        "models/typed.py": "import airflow\n",
        "models/other.py": "",
        "models/unused.py": "import airflow\n",
        "pipeline/__init__.py": "",
        "pipeline/core/__init__.py": "",
        "pipeline/core/c.py": "name = 1\n",
    }
    for path, text in sources.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.setattr(packaging, "NAMESPACE_FOLDER", tmp_path)

    code = served_code("clickstream.models.entry")

    assert set(code) == {
        "clickstream.models.entry",
        "clickstream.models",
        "clickstream.models.a",
        "clickstream.models.b",
        "clickstream.models.other",
        "clickstream.pipeline",
        "clickstream.pipeline.core",
        "clickstream.pipeline.core.c",
    }
    assert requirements(code) == [f"numpy=={importlib.metadata.version('numpy')}"]


def test_given_the_served_code_then_its_requirements_pin_each_package_it_imports_at_the_installed_version() -> None:
    pins = dict(line.split("==") for line in requirements(served_code()))

    assert {"torch", "polars", "polars-hash", "pyarrow", "numpy", "pandas", "scipy", "mlflow"} <= set(pins)
    assert all(pins[name] == importlib.metadata.version(name).split("+")[0] for name in pins)
    assert not {"apache-airflow-core", "scikit-learn", "lightgbm", "optuna", "mlflow-skinny"} & set(pins)


@pytest.mark.slow
def test_given_mlflow_models_serve_when_lake_sessions_are_posted_then_it_answers_clickstream_scores(
    lake_sessions: tuple[Settings, pl.DataFrame], tmp_path: Path
) -> None:
    settings, sessions = lake_sessions
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local"]
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        rows = sessions.drop("score").to_pandas()  # whole lake rows: tz-aware timestamps, unread columns
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", date_format="iso", double_precision=15))}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = pl.DataFrame(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=60)

    assert answer["session_id"].to_list() == sessions["session_id"].to_list()
    np.testing.assert_allclose(answer["score"].to_numpy(), sessions["score"].to_numpy(), rtol=0, atol=1e-6)


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, attempts: int = 600) -> None:
    """Poll `url` until it answers (at most `attempts` times, 0.5 s apart); fail if the server exits."""
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert server.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer: {log.read_text()[-2000:]}")


def test_given_sessions_with_aware_naive_or_string_starts_then_scores_equal_the_scorers(
    lake_sessions: tuple[Settings, pl.DataFrame], champion: ModelBundle
) -> None:
    _, sessions = lake_sessions
    rows = sessions.head(300).drop("score")
    expected = champion.score(rows)
    no_start_fields = rows.drop("start_hour", "start_weekday")
    forms = {
        "lake rows (aware)": rows.to_pandas(),
        "aware session_start": no_start_fields.to_pandas(),
        "naive session_start": no_start_fields.with_columns(pl.col("session_start").dt.replace_time_zone(None)),
        "ISO strings": no_start_fields.with_columns(pl.col("session_start").dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00")),
        "other zone": no_start_fields.with_columns(pl.col("session_start").dt.convert_time_zone("Asia/Tokyo")),
    }
    for form, frame in forms.items():
        frame = frame if isinstance(frame, pd.DataFrame) else frame.to_pandas()

        scored = score_input(champion, frame)

        assert scored["session_id"].to_list() == rows["session_id"].to_list(), form
        np.testing.assert_array_equal(scored["score"].to_numpy(), expected, err_msg=form)


def test_given_raw_events_then_scores_equal_the_scorers_on_the_sequences_the_pipeline_builds(
    champion_settings: Settings, champion: ModelBundle, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    generate_logs(raw, sessions=300, days=2, start_date=dt.date(2014, 4, 1), seed=3)
    ingest_files(champion_settings, "yoochoose", [raw / "yoochoose-clicks.dat"])  # clicks only: no purchase
    build_sequences(champion_settings, None, None)
    lake = Lake(champion_settings.lake)
    sequences = read_sequences(lake, None, None)
    events = lake.scan("events").select("session_id", "ts", "item_id", "category", "event_type").collect()
    events = events.sample(fraction=1.0, shuffle=True, seed=1)  # any row order
    only_a_purchase = pl.DataFrame(
        {"session_id": ["bought"], "ts": [dt.datetime(2014, 4, 1, 12, tzinfo=dt.UTC)], "item_id": ["1"]}
    ).with_columns(category=pl.lit(None, pl.String), event_type=pl.lit("purchase"))
    expected = dict(zip(sequences["session_id"], champion.score(sequences), strict=True))

    for timestamps in ("aware", "naive"):
        given = events if timestamps == "aware" else events.with_columns(pl.col("ts").dt.replace_time_zone(None))

        scored = score_input(champion, given.to_pandas())

        assert scored["session_id"].to_list() == events["session_id"].unique(maintain_order=True).to_list()
        got = dict(zip(scored["session_id"], scored["score"], strict=True))
        assert got.keys() == expected.keys()
        np.testing.assert_allclose(list(got.values()), [expected[k] for k in got], rtol=0, atol=1e-6)
    # a session with nothing before its first purchase has nothing to score: refused, never NaN
    with pytest.raises(MlflowException, match="event_type: session\\(s\\) 'bought' have no event before"):
        score_input(champion, pl.concat([events, only_a_purchase.select(events.columns)]).to_pandas())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["log_gap_prev"]), "lacks columns \\['log_gap_prev'\\]"),
        (lambda f: f.drop(columns=["start_hour", "session_start"]), "lacks columns \\['session_start'\\]"),
        (lambda f: f.assign(event_type=[[9] * len(x) for x in f["item_id"]]), "event_type codes must lie in 0..4"),
        (lambda f: f.assign(log_gap_prev=[[0.0] for _ in f["item_id"]]), "equally long"),
        (lambda f: f.assign(item_id=None), "nulls"),
        (lambda f: f.drop(columns=["log_gap_prev", "item_id"]).assign(ts="noon"), "lacks columns \\['item_id'\\]"),
        (lambda f: f.drop(columns=["log_gap_prev"]).assign(ts="yesterday", item_id="1"), "wrong type"),
    ],
)
def test_given_input_the_model_cannot_read_then_one_line_mlflow_error_naming_it(
    lake_sessions: tuple[Settings, pl.DataFrame], champion: ModelBundle, change, message: str
) -> None:
    rows = lake_sessions[1].head(20).drop("score").to_pandas()

    with pytest.raises(MlflowException, match=message) as error:
        score_input(champion, change(rows))

    assert "\n" not in error.value.message and error.value.error_code == "INVALID_PARAMETER_VALUE"
