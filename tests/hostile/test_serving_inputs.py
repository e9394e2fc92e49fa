"""Serving refuses garbage: the champion's pyfunc, in this process and behind the real
`mlflow models serve`, answers a `start_hour` outside 0..23, a negative time gap, a session
without events, a gap of 1e308 and NaN or infinite gaps with an error naming the column (HTTP
400), and never a NaN score; valid sessions still get their finite scores."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pandas as pd
import polars as pl
import pytest
from fixtures import synthetic_sequences
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from clickstream.models.pyfunc import SESSION_COLUMNS, BuyIntentModel
from clickstream.models.registry.store import tracking_client
from clickstream.pipeline.core.config import Settings, load_settings

CHAMPION = "models:/clickstream-buy-intent@champion"
BIN = Path(sys.executable).parent
Row = dict[str, object]


def _sessions() -> pl.DataFrame:
    """Six sessions of two events or more, in the sessions form as JSON brings it (plain lists)."""
    frame = synthetic_sequences(sessions=60, days=1, seed=5).filter(pl.col("n_events") >= 2).head(6)
    return frame.select(SESSION_COLUMNS).with_columns(pl.col("item_id", "category").cast(pl.List(pl.String)))


def _with_gap(value: float) -> Callable[[Row], None]:
    def change(row: Row) -> None:
        row["log_gap_prev"] = [row["log_gap_prev"][0], value, *row["log_gap_prev"][2:]]

    return change


def _emptied(row: Row) -> None:
    for column in ("item_id", "category", "event_type", "log_gap_prev"):
        row[column] = []


HOUR = "start_hour must be the session start's UTC hour, 0..23"
NON_FINITE = "log_gap_prev holds null, NaN or infinite values"
# the probe's inputs: what changes in the first session, and how the refusal starts (with the column's name)
BAD_SESSIONS: dict[str, tuple[Callable[[Row], None], str]] = {
    "start_hour 99": (lambda row: row.update(start_hour=99), HOUR),
    "start_hour -5": (lambda row: row.update(start_hour=-5), HOUR),
    "a negative time gap": (_with_gap(-3.0), "log_gap_prev holds negative time gaps"),
    "an empty session": (_emptied, "item_id: session(s) "),
    "a gap of 1e308": (_with_gap(1e308), "log_gap_prev holds gaps above"),
    "a NaN gap": (_with_gap(math.nan), NON_FINITE),
    "an infinite gap": (_with_gap(math.inf), NON_FINITE),
}


def _bad_rows(case: str) -> tuple[list[str], list[list[object]], str]:
    """(columns, rows, the first session's id) of the sessions with `case` applied to the first."""
    sessions = _sessions()
    rows = sessions.rows(named=True)
    BAD_SESSIONS[case][0](rows[0])
    return sessions.columns, [list(row.values()) for row in rows], str(rows[0]["session_id"])


def _purchase_first() -> pd.DataFrame:
    """Raw events: one session with clicks, one whose first event is its purchase."""
    return pd.DataFrame(
        {
            "session_id": ["clicks", "clicks", "bought"],
            "ts": ["2014-04-01T10:00:00Z", "2014-04-01T10:01:00Z", "2014-04-01T11:00:00Z"],
            "item_id": ["1", "2", "3"],
            "category": [None, None, None],
            "event_type": ["view", "view", "purchase"],
        }
    )


@pytest.fixture(scope="module")
def champion_model(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, BuyIntentModel]:
    """The champion's pyfunc, loaded in this process from its registered artifacts as MLflow loads it."""
    settings = load_settings(lake=str(champion_home / "no-lake"), home=champion_home, environ={})
    tracking_client(settings)
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path_factory.mktemp("champion"))))
    artifacts = Model.load(str(local / "MLmodel")).flavors["python_function"]["artifacts"]
    model = BuyIntentModel()
    paths = {name: str(local / spec["path"]) for name, spec in artifacts.items()}
    model.load_context(mlflow.pyfunc.PythonModelContext(paths, None))
    return settings, model


def _refused(model: BuyIntentModel, frame: pd.DataFrame) -> str:
    with pytest.raises(MlflowException) as error:
        model.predict(None, frame)
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "\n" not in error.value.message
    return error.value.message


@pytest.mark.parametrize("case", list(BAD_SESSIONS))
def test_given_a_bad_session_when_the_pyfunc_predicts_in_process_then_it_raises_naming_the_column_and_session(
    champion_model: tuple[Settings, BuyIntentModel], case: str
) -> None:
    columns, rows, first = _bad_rows(case)

    message = _refused(champion_model[1], pd.DataFrame(rows, columns=columns))

    assert message.startswith(BAD_SESSIONS[case][1]) and repr(first) in message


def test_given_raw_events_with_a_session_whose_first_event_is_its_purchase_then_refused_naming_event_type(
    champion_model: tuple[Settings, BuyIntentModel],
) -> None:
    message = _refused(champion_model[1], _purchase_first())

    assert message.startswith("event_type: session(s) 'bought' have no event before their first purchase")


def test_given_valid_sessions_and_events_then_every_score_is_finite(
    champion_model: tuple[Settings, BuyIntentModel],
) -> None:
    model = champion_model[1]
    sessions = _sessions()

    scored = model.predict(None, sessions.to_pandas())
    events = model.predict(None, _purchase_first().iloc[:2])

    assert scored["session_id"].tolist() == sessions["session_id"].to_list()
    assert np.isfinite(scored["score"]).all() and ((scored["score"] > 0) & (scored["score"] < 1)).all()
    assert events["session_id"].tolist() == ["clicks"] and np.isfinite(events["score"]).all()


# --- behind `mlflow models serve` ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(champion_model: tuple[Settings, BuyIntentModel], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the champion on 127.0.0.1 (as tests/test_pyfunc.py starts it); yields its URL."""
    settings = champion_model[0]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local"]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, attempts: int = 600) -> None:
    """Poll `url` until it answers (at most `attempts` times, 0.5 s apart); fail if the server exits."""
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer: {log.read_text()[-2000:]}")


def _post(url: str, columns: list[str], rows: list[list[object]]) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of /invocations for a dataframe_split body; NaN and inf go as JSON's
    NaN/Infinity tokens (Python's json, which MLflow parses with)."""
    body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _our_message(answer: dict) -> str:
    """The pyfunc's own message: MLflow prefixes it with the whole input, which names every column."""
    return answer["message"].rsplit("\nError: ", 1)[-1]


@pytest.mark.slow
def test_given_mlflow_models_serve_when_bad_sessions_are_posted_then_400_naming_the_column_and_valid_ones_score(
    server: str, champion_model: tuple[Settings, BuyIntentModel]
) -> None:
    answers = {case: _post(server, *_bad_rows(case)[:2]) for case in BAD_SESSIONS}
    raw = _purchase_first()
    raw_answer = _post(server, list(raw.columns), raw.astype(object).where(raw.notna(), None).values.tolist())
    sessions = _sessions()
    status, valid = _post(server, sessions.columns, [list(row) for row in sessions.rows()])

    for case, (code, answer) in answers.items():
        assert code == 400, (case, answer)
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE", case
        assert _our_message(answer).startswith(BAD_SESSIONS[case][1]), (case, answer["message"][-500:])
    assert raw_answer[0] == 400 and "event_type: session(s) 'bought'" in _our_message(raw_answer[1])
    assert status == 200
    scores = pl.DataFrame(valid["predictions"])
    expected = champion_model[1].predict(None, sessions.to_pandas())
    assert scores["session_id"].to_list() == sessions["session_id"].to_list()
    assert scores["score"].is_finite().all()
    np.testing.assert_allclose(scores["score"].to_numpy(), expected["score"].to_numpy(), rtol=0, atol=1e-6)
