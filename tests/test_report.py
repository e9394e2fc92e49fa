"""The analysts' HTML report: one valid, self-contained file that a browser renders."""

from __future__ import annotations

import base64
import datetime as dt
import html
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences

from clickstream.models.evaluation import evaluate
from clickstream.pipeline.core.config import MODEL_NAME, Settings, load_settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.history import model_versions
from clickstream.pipeline.serve.holdout import after_training
from clickstream.pipeline.serve.report import lift_table, scored_sessions, write_report
from clickstream.pipeline.serve.scoring import score_dates

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Document(HTMLParser):
    """Collects images, headings and tag balance while parsing."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.unbalanced: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.open.append(tag)
        self._in_heading = tag in {"h1", "h2"}

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.unbalanced.append(tag)
        self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings.append(data)


@dataclass(frozen=True)
class Reported:
    settings: Settings
    days: list[dt.date]
    out: Path
    summary: str


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, champion_home: Path) -> Reported:
    """Five days scored by the tiny champion (trained through the third) and reported once for
    this module (read-only)."""
    root = tmp_path_factory.mktemp("report")
    settings = load_settings(lake=str(root / "lake"), home=champion_home, environ={})
    days = write_sequences(Lake(settings.lake), synthetic_sequences(sessions=1000, days=5, seed=4))
    score_dates(settings, days[0], days[-1])
    (root / "out").mkdir()
    out = root / "out" / "report.html"
    return Reported(settings, days, out, write_report(settings, None, None, out))


def test_given_scored_days_when_reported_then_one_valid_html_file_with_embedded_png_plots(reported: Reported) -> None:
    first, last = reported.days[0], reported.days[-1]
    document = Document()
    document.feed(reported.out.read_text(encoding="utf-8"))
    document.close()

    assert document.doctype.lower() == "doctype html"
    assert document.open == [] and document.unbalanced == []
    assert document.headings == [
        f"clickstream report {first}..{last}",
        "Volumes per day",
        "Score distribution",
        "Lift by score decile",
        "Champion on the latest labelled days",
        "Champion and challengers over time",
    ]
    assert len(document.images) == 6  # volumes, distribution, lift, ROC, calibration, versions
    for src in document.images:
        prefix, _, payload = src.partition(",")
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(payload, validate=True).startswith(PNG_SIGNATURE)
    text = reported.out.read_text()
    assert "champion v1" in text and f"{MODEL_NAME}" in text
    assert "src=\"http" not in text and "<script" not in text  # self-contained, nothing fetched
    assert [p.name for p in reported.out.parent.iterdir()] == ["report.html"]  # atomic: no temporary left
    assert reported.summary == f"report for {first}..{last}: 1,000 scored sessions, 6 plots -> {reported.out}"


def test_given_labelled_scores_when_lift_is_computed_then_deciles_partition_sessions_and_rates_match(
    reported: Reported,
) -> None:
    scores = scored_sessions(Lake(reported.settings.lake), reported.days[0], reported.days[-1])

    table = lift_table(scores)

    assert table["decile"].to_list() == list(range(1, 11))
    assert table["sessions"].sum() == 1000 and set(table["sessions"].to_list()) == {100}
    assert table["mean_score"].is_sorted()
    buyers = scores["label"].sum()
    assert float((table["buy_rate"] * table["sessions"]).sum()) == pytest.approx(buyers)
    assert float((table["lift"] * table["sessions"]).sum()) / 1000 == pytest.approx(1.0)


def test_given_days_inside_the_champions_training_window_when_reported_then_quality_uses_only_later_days(
    reported: Reported,
) -> None:
    versions = model_versions(reported.settings)
    trained_through = versions.filter(pl.col("version") == "1")["trained_through"][0]
    scores = scored_sessions(Lake(reported.settings.lake), reported.days[0], reported.days[-1])
    after = scores.filter(pl.col("date") > trained_through)
    inside = scores.height - after.height
    text = html.unescape(reported.out.read_text())

    holdout = after_training(scores, versions)

    assert trained_through == reported.days[2] and 0 < inside < scores.height
    assert holdout.sessions["session_id"].to_list() == after["session_id"].to_list() and holdout.excluded == inside
    assert holdout.sentence == (
        f"Quality figures (lift, AUC, calibration) leave out {inside:,} labelled sessions of "
        f"{reported.days[0]}..{reported.days[2]} that fall within the training window of the model that scored them "
        f"(v1 saw sessions through {trained_through})."
    )
    assert holdout.sentence in text
    honest = evaluate(after["label"].to_numpy(), after["score"].to_numpy(), after["n_events"].to_numpy())
    window = f"{reported.days[3]}..{reported.days[4]}"
    assert f"{after.height:,} labelled sessions of {window}, all after its training window: " in text
    assert f"AUC {honest.auc:.3f}, PR-AUC {honest.pr_auc:.3f}" in text
    assert f"{after.height:,} labelled sessions after their model's training window" in text


def test_given_only_days_after_the_training_window_when_reported_then_no_caveat(
    reported: Reported, tmp_path: Path
) -> None:
    out = tmp_path / "later.html"

    write_report(reported.settings, reported.days[3], reported.days[4], out)

    assert "leave out" not in out.read_text()


def test_given_the_champions_decision_when_reported_then_the_timeline_names_the_current_champion(
    reported: Reported,
) -> None:
    text = html.unescape(reported.out.read_text())

    assert "The current champion is v1 since " in text and "(promoted by cli:train (" in text
    assert "there was no champion" in text  # the decision's reason, in the timeline's table


def test_given_a_window_without_scores_when_reported_then_a_no_data_error(reported: Reported, tmp_path: Path) -> None:
    with pytest.raises(NoDataError, match="clickstream score"):
        write_report(reported.settings, dt.date(2020, 1, 1), None, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_given_a_report_when_headless_chromium_renders_it_then_the_screenshot_is_not_blank(
    reported: Reported, tmp_path: Path
) -> None:
    import matplotlib.image

    shot = tmp_path / "shot.png"

    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,2400",
            f"--screenshot={shot}",
            reported.out.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1000)
    non_white = (pixels < 0.9).any(axis=-1)
    assert non_white.mean() > 0.02  # text and plots drawn, not an empty page
    assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 50  # plots have many colours
