"""The analysts' HTML report: one valid, self-contained file that a browser renders, whose
figures come from score-bin aggregates equal to those computed on the sessions themselves."""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fixtures import synthetic_sequences, write_sequences
from polars.testing import assert_frame_equal

from clickstream.models.evaluation import evaluate, expected_calibration_error
from clickstream.pipeline.core import schemas
from clickstream.pipeline.core.config import MODEL_NAME, Settings, load_settings
from clickstream.pipeline.core.errors import NoDataError
from clickstream.pipeline.core.lake import Lake, dates_predicate
from clickstream.pipeline.serve import report
from clickstream.pipeline.serve.history import model_versions
from clickstream.pipeline.serve.holdout import after_training
from clickstream.pipeline.serve.report import (
    SCORE_BINS,
    bin_scores,
    binned_quality,
    distribution_table,
    lift_table,
    score_bins,
    write_report,
)
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
        self.alts: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
            self.alts.append(dict(attrs)["alt"] or "")
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


def sessions_of(lake: Lake, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Every scored session of [start, end] with its label (null when unknown), collected: the
    reference the aggregates are checked against, on small data only."""
    scores = lake.scan("scores", start, end)
    labels = lake.scan("sequences", start, end)
    assert scores is not None and labels is not None
    frame = scores.select("date", "session_id", "n_events", "score", "model_version").join(
        labels.select("date", "session_id", "label"), on=["date", "session_id"], how="left"
    )
    return frame.sort("date", "session_id").collect()


def direct_lift(scores: pl.DataFrame) -> pl.DataFrame:
    """Deciles of the labelled sessions sorted by score (ties by session_id), computed on the sessions."""
    labelled = scores.filter(pl.col("label").is_not_null()).sort("score", "session_id")
    overall = labelled["label"].mean()
    return (
        labelled.with_columns(decile=(pl.int_range(pl.len()) * 10 // pl.len() + 1).cast(pl.Int32))
        .group_by("decile")
        .agg(
            sessions=pl.len(),
            mean_score=pl.col("score").cast(pl.Float64).mean(),
            buy_rate=pl.col("label").cast(pl.Float64).mean(),
        )
        .with_columns(lift=pl.col("buy_rate") / overall)
        .sort("decile")
    )


def tie_allowance(labels: np.ndarray, scores: np.ndarray) -> float:
    """How far an AUC on score bins may be from the exact one: half the buyer/non-buyer pairs that
    share a bin, as a share of all such pairs."""
    labels = np.asarray(labels, dtype=bool)
    bins = np.minimum((np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    buyers = np.bincount(bins[labels], minlength=SCORE_BINS)
    others = np.bincount(bins[~labels], minlength=SCORE_BINS)
    return float((buyers * others).sum() / 2 / (buyers.sum() * others.sum()))


def reported_figure(text: str, name: str) -> float:
    """The number the report prints after `name` (the first time in `text`)."""
    found = re.search(rf"\b{name} ([0-9.]+[0-9])", text)
    assert found is not None, name
    return float(found.group(1))


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
    return Reported(settings, days, out, str(write_report(settings, None, None, out)))


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
        "Daily trend",
        "Score distribution",
        "Score drift against the validation days",
        "Validation: the champion at training time",
        "Live: lift by score decile",
        "Live: the champion after its training window",
        "Top sessions",
        "Champion and challengers over time",
    ]
    validation = f"validation (held-out days {reported.days[2]}..{reported.days[2]}, at training time)"
    live = f"live {reported.days[3]}..{reported.days[4]}"
    assert document.alts == [
        "sessions per day",  # the lake has no events nor quarantined rows: no empty panels
        "mean score and buy rate per day",
        "score distribution per model version",
        "PSI per day against the validation days",
        f"ROC, {validation}",
        f"calibration, {validation}",
        f"lift by score decile, {validation}",
        f"lift by score decile, live ({reported.days[3]}..{reported.days[4]})",
        f"ROC, {live}",
        f"calibration, {live}",
        "AUC at each champion decision",
    ]
    for src in document.images:
        prefix, _, payload = src.partition(",")
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(payload, validate=True).startswith(PNG_SIGNATURE)
    text = reported.out.read_text()
    assert "champion v1" in text and f"{MODEL_NAME}" in text
    assert 'src="http' not in text and "<script" not in text  # self-contained, nothing fetched
    assert [p.name for p in reported.out.parent.iterdir()] == ["report.html"]  # atomic: no temporary left
    assert reported.summary == f"report for {first}..{last}: 1,000 scored sessions, 11 plots -> {reported.out}"


def test_given_labelled_scores_when_lift_is_computed_then_deciles_partition_sessions_and_rates_match(
    reported: Reported,
) -> None:
    lake = Lake(reported.settings.lake)
    scores = sessions_of(lake, reported.days[0], reported.days[-1])

    bins = score_bins(lake, reported.days[0], reported.days[-1])
    table = lift_table(bins)

    assert_frame_equal(bins, bin_scores(scores.lazy()).collect().sort("date", "model_version", "bin"), rel_tol=1e-9)
    assert bins.height <= SCORE_BINS * len(reported.days)
    assert table["decile"].is_sorted() and table["decile"].n_unique() == table.height
    assert set(table["decile"].to_list()) <= set(range(1, 11)) and table["decile"].max() == 10
    assert table["sessions"].sum() == 1000  # every session in one decile, ties within a bin together
    assert table["mean_score"].is_sorted()
    buyers = scores["label"].sum()
    assert float((table["buy_rate"] * table["sessions"]).sum()) == pytest.approx(buyers)
    assert float((table["lift"] * table["sessions"]).sum()) / 1000 == pytest.approx(1.0)


def test_given_holdout_bins_when_the_champion_is_reported_then_its_figures_are_those_of_the_sessions(
    reported: Reported,
) -> None:
    versions = model_versions(reported.settings)
    trained_through = versions.filter(pl.col("version") == "1")["trained_through"][0]
    scores = sessions_of(Lake(reported.settings.lake), reported.days[0], reported.days[-1])
    after = scores.filter(pl.col("date") > trained_through)
    labels, values = after["label"].to_numpy(), after["score"].to_numpy()
    direct = evaluate(labels, values, after["n_events"].to_numpy())
    text = html.unescape(reported.out.read_text()).partition("<h2>Live: the champion after its training window")[2]

    quality = binned_quality(bin_scores(after.lazy()).collect())

    assert quality.sessions == after.height
    assert abs(quality.auc - direct.auc) <= tie_allowance(labels, values) + 1e-12
    assert quality.logloss == pytest.approx(direct.logloss, rel=1e-9)
    assert quality.calibration_error == pytest.approx(direct.calibration_error, rel=1e-9, abs=1e-12)
    shown = {name: reported_figure(text, name) for name in ("AUC", "PR-AUC", "log loss", "calibration error")}
    assert shown == {
        "AUC": round(quality.auc, 3),
        "PR-AUC": round(quality.pr_auc, 3),
        "log loss": round(quality.logloss, 3),
        "calibration error": round(quality.calibration_error, 3),
    }


def test_given_days_inside_the_champions_training_window_when_reported_then_quality_uses_only_later_days(
    reported: Reported,
) -> None:
    versions = model_versions(reported.settings)
    trained_through = versions.filter(pl.col("version") == "1")["trained_through"][0]
    lake = Lake(reported.settings.lake)
    scores = sessions_of(lake, reported.days[0], reported.days[-1])
    after = scores.filter(pl.col("date") > trained_through)
    inside = scores.height - after.height
    text = html.unescape(reported.out.read_text())

    holdout = after_training(score_bins(lake, reported.days[0], reported.days[-1]), versions)

    assert trained_through == reported.days[2] and 0 < inside < scores.height
    assert holdout.kept["date"].min() > trained_through and holdout.excluded == inside
    assert holdout.kept["sessions"].sum() == after.height
    assert holdout.sentence == (
        f"Live figures (lift, AUC, calibration) leave out {inside:,} labelled sessions of "
        f"{reported.days[0]}..{reported.days[2]} that fall within the training window of the model that scored them "
        f"(v1 saw sessions through {trained_through})."
    )
    assert holdout.sentence in text
    window = f"{reported.days[3]}..{reported.days[4]}"
    assert f"{after.height:,} labelled sessions of {window}, all after its training window: " in text
    assert f"{after.height:,} labelled sessions after their model's training window" in text


def test_given_sessions_one_to_a_score_bin_when_aggregated_then_every_figure_equals_the_direct_one() -> None:
    rng = np.random.default_rng(7)
    n = 901  # odd: one middle session, so the median is one session's score
    scores = ((rng.permutation(SCORE_BINS)[:n] + rng.uniform(0.05, 0.95, n)) / SCORE_BINS).astype(np.float32)
    labels = rng.uniform(size=n) < scores
    frame = pl.DataFrame(
        {
            "date": pl.Series([dt.date(2024, 5, 1), dt.date(2024, 5, 2)]).gather(rng.integers(0, 2, n)),
            "session_id": [f"s{i:04d}" for i in range(n)],
            "model_version": "3",
            "score": scores,
            "label": pl.Series(labels).scatter(rng.choice(n, 50, replace=False), None),  # some unknown outcomes
        }
    )
    known = frame.filter(pl.col("label").is_not_null())
    truth, values = known["label"].to_numpy().astype(bool), known["score"].to_numpy()
    direct = evaluate(truth, values, np.ones(known.height))

    bins = bin_scores(frame.lazy()).collect()
    quality = binned_quality(bins)
    shape = distribution_table(bins)

    assert bins.height == n and bins["sessions"].sum() == n
    assert_frame_equal(lift_table(bins), direct_lift(frame), check_dtypes=False, rel_tol=1e-9)
    assert quality.sessions == known.height
    assert quality.auc == pytest.approx(direct.auc, rel=1e-12)
    assert quality.pr_auc == pytest.approx(direct.pr_auc, rel=1e-12)
    assert quality.logloss == pytest.approx(direct.logloss, rel=1e-9)
    assert quality.calibration_error == pytest.approx(expected_calibration_error(truth, values), rel=1e-9)
    assert shape["sessions"].to_list() == [n]
    assert shape["mean_score"][0] == pytest.approx(float(scores.astype(np.float64).mean()), rel=1e-12)
    assert shape["share_over_half"][0] == pytest.approx(float((scores >= 0.5).mean()), rel=1e-12)
    assert abs(shape["median_score"][0] - float(np.median(scores))) <= 1 / SCORE_BINS


def test_given_many_sessions_sharing_bins_when_aggregated_then_the_auc_is_within_the_ties_of_a_bin() -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    scores = rng.beta(2, 5, n).astype(np.float32)
    labels = rng.uniform(size=n) < scores
    frame = pl.DataFrame({"date": dt.date(2024, 5, 1), "model_version": "1", "score": scores, "label": labels})
    direct = evaluate(labels, scores, np.ones(n))

    quality = binned_quality(bin_scores(frame.lazy()).collect())

    allowance = tie_allowance(labels, scores)
    assert 0 < allowance < 1e-3  # many ties, still a tiny share of all pairs
    assert abs(quality.auc - direct.auc) <= allowance
    assert quality.pr_auc == pytest.approx(direct.pr_auc, abs=1e-3)
    assert quality.logloss == pytest.approx(direct.logloss, rel=1e-9)
    assert quality.calibration_error == pytest.approx(direct.calibration_error, rel=1e-9)


def test_given_50k_sessions_when_binned_then_no_query_returns_more_rows_than_bins_per_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    n, days = 50_000, [dt.date(2024, 6, 1) + dt.timedelta(days=d) for d in range(5)]
    ids = [f"session-{i}" for i in range(n)]
    scores = rng.beta(2, 5, n).astype(np.float32)
    labels = pl.Series(rng.uniform(size=n) < scores).scatter(rng.choice(n, 5000, replace=False), None)
    lake = Lake(tmp_path / "lake")
    written = {
        "sequences": (schemas.SEQUENCES, {"session_id": ids, "label": labels}),
        "scores": (schemas.SCORES, {"session_id": ids, "score": scores, "model_version": "2"}),
    }
    for table, (schema, columns) in written.items():
        frame = pl.DataFrame({"date": pl.Series(days).gather(np.arange(n) * len(days) // n), **columns})
        rest = [pl.lit(None, dtype=kind).alias(name) for name, kind in schema.items() if name not in frame.columns]
        lake.commit(table, frame.with_columns(rest), replace=dates_predicate(days[0], days[-1]), stage="test")
    heights: list[int] = []  # of every frame the streaming engine returns
    collect = pl.LazyFrame.collect

    def counted(self: pl.LazyFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        result = collect(self, *args, **kwargs)
        if kwargs.get("engine") == "streaming":
            heights.append(result.height)
        return result

    whole = score_bins(lake, days[0], days[-1])
    monkeypatch.setattr(report, "SESSIONS_PER_PART", 3_000)  # each day of 10,000 sessions in 4 hash parts
    monkeypatch.setattr(pl.LazyFrame, "collect", counted)
    parted = score_bins(lake, days[0], days[-1])

    assert len(heights) == 4 * len(days)  # a query per day and part
    assert max(heights) <= SCORE_BINS  # one model version a day: a row per bin at most, never a session
    assert parted.height <= SCORE_BINS * len(days)
    assert_frame_equal(parted, whole, rel_tol=1e-9)
    assert parted["sessions"].sum() == n and parted["labelled"].sum() == n - 5000
    assert parted["buyers"].sum() == labels.sum()
    per_day = parted.group_by("date").agg(pl.col("sessions").sum()).sort("date")
    assert per_day["sessions"].to_list() == [n // len(days)] * len(days)


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
