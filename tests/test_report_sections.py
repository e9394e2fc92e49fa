"""The report's validation and live figures, drift, volumes, top sessions and run link: what an
analyst reads from a champion's first day on, and an earlier model's scores after a rescore."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fixtures import labelled_lake, synthetic_sequences, write_sequences
from polars.testing import assert_frame_equal

from clickstream.models.evaluation import score_histogram
from clickstream.models.registry.store import model_version, tracking_client
from clickstream.models.training.train import train_and_register
from clickstream.pipeline.core.config import Settings, load_settings
from clickstream.pipeline.core.lake import TABLE_SCHEMAS, Lake, dates_predicate
from clickstream.pipeline.serve.history import decisions, model_versions
from clickstream.pipeline.serve.report import (
    BIN_SCHEMA,
    PSI_THRESHOLD,
    SCORE_BINS,
    TOP_SESSIONS,
    TrainingRun,
    bin_scores,
    decision_table,
    drift_section,
    psi_table,
    read_training_run,
    run_link,
    top_sessions,
    validation_bins,
    validation_section,
    volume_section,
    write_report,
)
from clickstream.pipeline.serve.scoring import score_dates

DOCS = Path(__file__).resolve().parents[1] / "docs" / "analysts.md"


def section(text: str, title: str) -> str:
    """The HTML of the report section titled `title`, unescaped."""
    found = re.search(rf"<section><h2>{re.escape(title)}</h2>(.*?)</section>", text, re.S)
    assert found is not None, title
    return html.unescape(found.group(1))


def image_alts(text: str) -> list[str]:
    return [html.unescape(alt) for alt in re.findall(r'<img alt="([^"]*)"', text)]


def commit_rows(lake: Lake, table: str, day: dt.date, columns: dict[str, object]) -> None:
    """Rows of `columns` (the rest null, the bucket from the session key) committed to `table` as
    the day's whole partition."""
    frame = pl.DataFrame({"date": day, **columns})
    stored = TABLE_SCHEMAS[table].items()
    rest = [pl.lit(None, dtype=kind).alias(name) for name, kind in stored if name not in {*frame.columns, "bucket"}]
    lake.commit(table, frame.with_columns(rest), replace=dates_predicate(day, day), stage="test")


@pytest.fixture(scope="module")
def inside(tmp_path_factory: pytest.TempPathFactory, champion_home: Path) -> tuple[Settings, list[dt.date], str]:
    """The champion's own three days (all inside its training window) scored and reported once."""
    root = tmp_path_factory.mktemp("inside")
    settings = load_settings(lake=str(root / "lake"), home=champion_home, environ={})
    days = write_sequences(Lake(settings.lake), synthetic_sequences(sessions=600, days=3, seed=5))
    score_dates(settings, days[0], days[-1])
    out = root / "report.html"
    write_report(settings, None, None, out)
    return settings, days, out.read_text(encoding="utf-8")


def test_given_every_scored_day_inside_the_training_window_when_reported_then_validation_figures_and_why_no_live_ones(
    inside: tuple[Settings, list[dt.date], str],
) -> None:
    settings, days, text = inside
    champion = model_versions(settings).filter(pl.col("version") == "1").row(0, named=True)
    held_out = f"validation (held-out days {days[2]}..{days[2]}, at training time)"
    waiting = (
        f"No scored day after {days[2]} yet: live figures appear once days after the training window "
        "of champion v1 are scored."
    )

    validation = section(text, "Validation: the champion at training time")

    assert champion["trained_through"] == days[2]
    assert (
        f"Champion v1, {held_out}: AUC {champion['val_auc']:.3f} (GBM baseline {champion['gbm_val_auc']:.3f})"
        in validation
    )
    assert f"<td>AUC</td><td>{champion['val_auc']:.4f}</td><td>{champion['gbm_val_auc']:.4f}</td>" in validation
    assert image_alts(validation) == [
        f"ROC, {held_out}",
        f"calibration, {held_out}",
        f"lift by score decile, {held_out}",
    ]
    run = model_version(settings, "1").run_id
    logged = read_training_run(settings, "1").histogram
    validated = int(tracking_client(settings).get_run(run).data.params["val_sessions"])
    assert logged is not None and logged["sessions"].sum() == validated  # every validation session, binned
    deciles = re.search(r"<th>lift</th></tr></thead><tbody>(.*?)</tbody>", validation)
    assert deciles is not None and deciles.group(1).count("<tr>") == 10  # from the run's score histogram
    assert section(text, "Live: lift by score decile") == f"<p>{waiting}</p>\n"
    assert section(text, "Live: the champion after its training window") == f"<p>{waiting}</p>\n"
    assert not any(alt.startswith(("ROC, live", "lift by score decile, live")) for alt in image_alts(text))
    assert f"Trained in MLflow run {run} (experiment " in text  # a SQLite store: the run id, no link


def test_given_a_scored_day_after_the_training_window_when_reported_then_live_figures_and_no_waiting(
    champion_settings: Settings,
) -> None:
    days = write_sequences(Lake(champion_settings.lake), synthetic_sequences(sessions=600, days=4, seed=6))
    score_dates(champion_settings, days[0], days[-1])
    out = Path(champion_settings.lake).parent / "report.html"

    write_report(champion_settings, None, None, out)

    text = out.read_text(encoding="utf-8")
    live = section(text, "Live: the champion after its training window")
    assert (
        live.startswith("<p>Live: champion v1 on ") and f"labelled sessions of {days[3]}..{days[3]}, all after" in live
    )
    assert image_alts(live) == [f"ROC, live {days[3]}..{days[3]}", f"calibration, live {days[3]}..{days[3]}"]
    assert section(text, "Live: lift by score decile").startswith(f"<p>live ({days[3]}..{days[3]}): ")
    assert "No scored day after" not in text


def test_given_a_day_like_the_validation_days_and_a_shifted_one_when_psi_is_computed_then_the_shifted_is_flagged() -> (
    None
):
    rng = np.random.default_rng(5)
    validation = rng.beta(2, 8, 4000).astype(np.float32)
    logged = validation_bins(json.dumps(score_histogram(np.zeros(4000), validation)).encode())
    assert logged is not None
    reference = np.bincount(logged["bin"].to_numpy(), logged["sessions"].to_numpy(), SCORE_BINS)
    same, shifted = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
    scored = pl.DataFrame(
        {
            "date": [same] * 4000 + [shifted] * 4000,
            "model_version": "1",
            "score": np.concatenate([validation, np.clip(validation + 0.15, 0, 1)]),
            "label": pl.Series([None] * 8000, dtype=pl.Boolean),
        }
    )

    table = psi_table(bin_scores(scored.lazy()).collect(), reference)

    assert table["date"].to_list() == [same, shifted] and table["sessions"].to_list() == [4000, 4000]
    assert table["psi"][0] == pytest.approx(0.0, abs=1e-12)
    assert table["psi"][1] > PSI_THRESHOLD
    assert table["drifted"].to_list() == ["", "drifted"]


def test_given_the_training_runs_histogram_when_read_then_it_holds_the_bins_the_report_counts_scored_sessions_in() -> (
    None
):
    rng = np.random.default_rng(8)
    scores = rng.uniform(size=3000).astype(np.float32)
    scores[:3] = [0.0, 0.5, 1.0]  # the edges: the last bin holds 1.0
    labels = rng.uniform(size=3000) < scores
    frame = pl.DataFrame({"date": dt.date(2024, 5, 1), "model_version": "1", "score": scores, "label": labels})
    counted = bin_scores(frame.lazy()).collect().select("bin", "sessions", "score_sum", "buyers", "labelled")

    logged = validation_bins(json.dumps(score_histogram(labels, scores)).encode())

    assert logged is not None
    assert_frame_equal(logged.select(counted.columns), counted.sort("bin"), check_dtypes=False, rel_tol=1e-12)
    assert validation_bins(b'{"bins": 100, "bin": [], "sessions": [], "score_sum": [], "buyers": []}') is None


def test_given_a_run_without_a_score_histogram_when_reported_then_its_plots_and_metrics_without_lift_or_drift() -> None:
    run = TrainingRun(
        version="2",
        run_id="0" * 32,
        link="",
        label="validation (held-out days 2024-05-01..2024-05-02, at training time)",
        metrics={"val_auc": 0.71234, "gbm_val_auc": 0.69},
        plots={"roc.png": b"\x89PNG roc", "calibration.png": b"\x89PNG calibration"},
        histogram=None,
    )
    shown, drift = validation_section(run, ""), drift_section(pl.DataFrame(schema=BIN_SCHEMA), "2", run)

    assert "AUC 0.712 (GBM baseline 0.690)" in shown.note and "no lift by decile" in shown.note
    assert [plot.alt.split(",")[0] for plot in shown.images] == ["ROC", "calibration"]
    assert drift.images == () and drift.note == "No drift figures: its training run logged no score histogram."


def test_given_no_quarantined_rows_when_volumes_are_drawn_then_no_quarantine_plot_and_a_sentence_instead(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path / "lake")
    day = dt.date(2024, 5, 1)
    commit_rows(lake, "events", day, {"session_id": ["a", "a", "b"]})
    commit_rows(lake, "sequences", day, {"session_id": ["a", "b"]})

    clean = volume_section(lake, day, day)
    commit_rows(lake, "quarantine", day, {"line": [7]})
    quarantined = volume_section(lake, day, day)

    assert [plot.alt for plot in clean.images] == ["events and sessions per day"]
    assert clean.note.endswith("No quarantined rows on these days.")
    assert [plot.alt for plot in quarantined.images] == ["events and sessions and quarantined rows per day"]
    assert "No quarantined" not in quarantined.note


def test_given_tied_scores_when_the_top_sessions_are_listed_then_ties_go_by_session_id(settings: Settings) -> None:
    lake = Lake(settings.lake)
    earlier, latest = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
    commit_rows(lake, "scores", earlier, {"session_id": ["old"], "score": [0.99], "n_events": [3]})
    ids = [f"s{i}" for i in range(30)]
    scores = [0.9] * 5 + [0.8] * 25  # five ties on top, then more ties than the list holds
    commit_rows(lake, "scores", latest, {"session_id": ids[::-1], "score": scores, "n_events": 2})

    top = top_sessions(settings, latest)

    assert top.columns == ["session_id", "score", "events"] and top.height == TOP_SESSIONS
    tied_top, tied_rest = sorted(ids[::-1][:5]), sorted(ids[::-1][5:])
    assert top["session_id"].to_list() == tied_top + tied_rest[: TOP_SESSIONS - 5]
    assert top["score"].to_list()[:5] == pytest.approx([0.9] * 5)


def test_given_a_tracking_server_when_the_run_is_linked_then_its_ui_page_without_credentials() -> None:
    linked = run_link("https://reader:secret@mlflow.example.com:5000/", "7", "ab" * 16)

    assert linked == (
        f'<a href="https://mlflow.example.com:5000/#/experiments/7/runs/{"ab" * 16}">MLflow run {"ab" * 16}</a>'
    )
    assert run_link("sqlite:////srv/mlflow.db", "7", "ab" * 16) == f"MLflow run {'ab' * 16} (experiment 7)"


def test_given_the_decision_history_when_tabled_then_nine_short_columns(inside: tuple[Settings, list, str]) -> None:
    settings, _, text = inside

    table = decision_table(decisions(settings))

    assert table.columns == [
        "decided (UTC)",
        "by",
        "action",
        "challenger (AUC)",
        "champion (AUC)",
        "margin",
        "days",
        "sessions",
        "reason",
    ]
    auc = model_versions(settings)["val_auc"][0]
    assert table["challenger (AUC)"].to_list() == [f"v1 ({round(auc, 4)})"] and table["champion (AUC)"][0] is None
    assert "overflow-x:auto" in text  # a table wider than the page scrolls inside it


def test_given_a_rescore_by_a_new_model_when_the_documented_recipe_runs_then_it_finds_the_earlier_models_live_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = labelled_lake(tmp_path, sessions=1500, days=5, validation_days=1, epochs=1)
    days = Lake(settings.lake).dates("sequences")
    train_and_register(settings, days[0], days[2], device="cpu", promote=True)  # v1, trained through days[2]
    score_dates(settings, days[0], days[-1])
    live = Lake(settings.lake).read("scores", days[3], days[-1]).sort("session_id")
    train_and_register(settings, days[0], days[3], device="cpu")  # v2
    score_dates(settings, days[0], days[-1], model_uri=f"models:/{settings.model_name}/2")
    recipe = re.search(r"### An earlier model's scores after a rescore.*?```python\n(.*?)```", DOCS.read_text(), re.S)
    assert recipe is not None
    code, placeholders = re.subn(
        r"^LAKE, VERSION, TRAINED_THROUGH = .*$",
        f"LAKE, VERSION, TRAINED_THROUGH = {settings.lake!r}, '1', dt.date.fromisoformat('{days[2]}')",
        recipe.group(1),
        flags=re.M,
    )
    namespace: dict[str, object] = {}

    exec(compile(code, str(DOCS), "exec"), namespace)  # the documented recipe, as an analyst runs it

    judged = namespace["judged"]
    assert placeholders == 1 and isinstance(judged, pl.DataFrame)
    assert Lake(settings.lake).read("scores", days[0], days[-1])["model_version"].unique().to_list() == ["2"]
    assert judged.height == live.height > 0
    assert judged.sort("session_id")["score"].to_list() == live["score"].to_list()
    assert capsys.readouterr().out.startswith(f"v1: {live.height:,} sessions after its window, live AUC 0.")
