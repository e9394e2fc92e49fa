"""One self-contained HTML report for analysts: volumes per day, the daily mean score and buy
rate, the score distribution and its drift, the champion's figures on its held-out validation days
(as its training run logged them), lift, ROC and calibration on the days scored after the training
window ("live"), the top sessions of the latest day, and the champion decisions over time.

Every score figure comes from small aggregates, never from the scored sessions themselves: per
day, model version and score bin (SCORE_BINS equal-width bins of [0, 1]) the number of sessions,
of labelled sessions and of buyers, with sums of scores and of log loss (`score_bins`). Each day
is read by one streaming query (a very large day in hash parts of its sessions), so memory is
bounded by the bins, whatever the number of sessions. What the bins cost: deciles are taken on
whole bins (sessions tied within a bin stay together), medians are interpolated within a bin, and
AUC and PR-AUC treat the sessions of one bin as tied; means, buy rates, log loss and calibration
error are exact.

Two kinds of quality figures, each labelled with its days. Validation: what the champion's
training run measured on the days it held out (its metrics beside the GBM baseline's, its logged
ROC and calibration plots, and lift from its logged score histogram), read with one run fetch;
these exist from the first champion on. Live: lift, AUC and calibration on sessions that start
after the training window of the model that scored them (pipeline.serve.holdout); until such days
are scored, one sentence says why there are none and when they appear. The validation histogram is
also the reference the drift section compares each scored day with (population stability index).

Plots are PNGs embedded as base64 (matplotlib's Agg backend), so the one
file opens anywhere offline. A section without data says so instead of failing the report, and
draws no empty plot.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import mlflow.artifacts
import numpy as np
import polars as pl
from mlflow.exceptions import MlflowException

from clickstream.models.evaluation import (
    CALIBRATION_BINS,
    SCORE_BINS,
    SCORE_HISTOGRAM,
    draw_calibration,
    draw_roc,
)
from clickstream.models.registry.store import model_version, tracking_client
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.errors import ClickstreamError
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.core.progress import track
from clickstream.pipeline.core.tracking import redacted
from clickstream.pipeline.serve.analytics import query_scores
from clickstream.pipeline.serve.history import decisions, model_versions
from clickstream.pipeline.serve.holdout import after_training, waiting_for_live
from clickstream.pipeline.serve.output import check_out, format_cells, replace_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELLED_DAYS = 7  # ROC and calibration use the latest days with known outcomes, at most this many
DECILES = 10
# every score figure is computed from SCORE_BINS equal-width score bins of [0, 1] (models.evaluation,
# where the training run's validation histogram is counted in the same bins)
HISTOGRAM_BINS = 50  # bars of the distribution plot, SCORE_BINS // HISTOGRAM_BINS score bins each
SESSIONS_PER_PART = 1_000_000  # a day's scores meet their labels at most about this many at a time
LOG_LOSS_CLIP = 1e-7  # scores are clipped to [c, 1 - c] for log loss, as models.evaluation does
PSI_THRESHOLD = 0.2  # a day whose scores' PSI against the validation days passes this is flagged as drifted
PSI_BUCKETS = 10  # PSI compares shares of sessions in buckets that split the validation sessions evenly
PSI_FLOOR = 1e-4  # the share an empty bucket counts as, so that PSI stays finite
TOP_SESSIONS = 20
VALIDATION_METRICS = (  # (shown as, run metric name after `val_` / `gbm_val_`)
    ("AUC", "auc"),
    ("PR-AUC", "pr_auc"),
    ("log loss", "logloss"),
    ("calibration error", "calibration_error"),
    ("buy rate", "positive_rate"),
)

# score_bins: one row per date, model version and score bin
BIN_SCHEMA = pl.Schema(
    {
        "date": pl.Date,
        "model_version": pl.String,
        "bin": pl.Int32,  # floor(score * SCORE_BINS), the score 1.0 in the last bin
        "sessions": pl.Int64,
        "score_sum": pl.Float64,
        "labelled": pl.Int64,  # sessions with a known outcome
        "labelled_score_sum": pl.Float64,
        "buyers": pl.Int64,
        "log_loss_sum": pl.Float64,  # over the labelled sessions
    }
)
_SUMS = [name for name in BIN_SCHEMA.names() if name not in ("date", "model_version", "bin")]


@dataclass(frozen=True)
class ReportSummary:
    """What one `write_report` call wrote; str() is the CLI's one-line summary."""

    first: dt.date
    last: dt.date
    sessions: int
    plots: int
    out: Path

    def __str__(self) -> str:
        return (
            f"report for {self.first}..{self.last}: {self.sessions:,} scored sessions, {self.plots} plots -> {self.out}"
        )


@dataclass(frozen=True)
class Plot:
    """One embedded image: what it shows (its alt text) and the PNG, base64."""

    alt: str
    png: str


@dataclass(frozen=True)
class Section:
    """One titled part of the report: a note, then any plots and HTML tables."""

    title: str
    note: str
    images: tuple[Plot, ...] = ()
    table: str = ""


@dataclass(frozen=True)
class TrainingRun:
    """What the champion's training run recorded of its held-out validation days."""

    version: str
    run_id: str
    link: str  # HTML: the run's page in the MLflow UI, or its id where the store has no UI
    label: str  # "validation (held-out days FIRST..LAST, at training time)"
    metrics: dict[str, float]
    plots: dict[str, bytes]  # the logged `plots/` files by name
    histogram: pl.DataFrame | None  # validation scores per score bin (validation_bins); None when not logged


def write_report(settings: Settings, start: dt.date | None, end: dt.date | None, out: Path) -> ReportSummary:
    """Write the HTML report for scored dates in [start, end] (default: every scored date) to
    `out` atomically; returns what it wrote. NoDataError when no date in the window was scored."""
    check_out(out, settings.lake)  # before the work, not after it
    lake = Lake(settings.lake, settings.buckets)
    scored_days = lake.require_dates("scores", start, end, "run `clickstream score` first")
    first, last = scored_days[0], scored_days[-1]
    bins = score_bins(lake, first, last)
    versions = model_versions(settings)
    champion_row = next((v for v in versions.iter_rows(named=True) if CHAMPION in v["aliases"]), None)
    champion = champion_row["version"] if champion_row else None
    run, unread = champion_run(settings, champion)
    holdout = after_training(bins, versions)
    waiting = waiting_for_live(holdout.kept, champion, champion_row["trained_through"] if champion_row else None)
    sections = [
        volume_section(lake, first, last),
        trend_section(bins),
        distribution_section(bins),
        drift_section(bins, champion, run),
        validation_section(run, unread),
        lift_section(holdout.kept, waiting),
        champion_section(holdout.kept, champion, waiting),
        top_sessions_section(settings, last),
        timeline_section(decisions(settings), champion),
    ]
    title = f"clickstream report {first}..{last}"
    learned = _data_versions(champion_row)
    link = run.link if run else ""
    document = render(title, sections, settings.model_name, champion, holdout.sentence, learned, link)
    replace_file(Path(out), lambda tmp: Path(tmp).write_text(document, encoding="utf-8"), lake=settings.lake)
    plots = sum(len(s.images) for s in sections)
    return ReportSummary(first, last, int(bins["sessions"].sum()), plots, Path(out))


def score_bins(lake: Lake, start: dt.date, end: dt.date) -> pl.DataFrame:
    """The scores of [start, end] with their labels as BIN_SCHEMA aggregates, sorted by date,
    model version and bin: at most SCORE_BINS rows per day and model version, whatever the number
    of sessions, so the report's memory does not grow with them.

    Each day is one streaming query over its scores left-joined to its labels on session_id; a day
    of more than SESSIONS_PER_PART sessions (by the commit log's row counts) is taken in parts by
    the hash of session_id, so the join holds one part's keys at a time. Both tables are read at
    the versions current when this starts, so a commit meanwhile cannot mix two states."""
    scores_version, labels_version = lake.version("scores"), lake.version("sequences")
    rows = {day: count for day, count in lake.rows_per_date("scores", scores_version).items() if start <= day <= end}
    frames = [
        _day_bins(lake, day, -(-count // SESSIONS_PER_PART), scores_version, labels_version)
        for day, count in track(rows.items(), "report", total=len(rows), unit="days")
    ]
    return pl.concat([pl.DataFrame(schema=BIN_SCHEMA), *frames]).sort("date", "model_version", "bin")


def bin_scores(scored: pl.LazyFrame) -> pl.LazyFrame:
    """Scored sessions (columns date, model_version, score, label: null when unknown) aggregated
    to BIN_SCHEMA, one row per date, model version and score bin."""
    score = pl.col("score").cast(pl.Float64)
    label, known = pl.col("label"), pl.col("label").is_not_null()
    clipped = score.clip(LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    bin_of = (score.clip(0.0, 1.0) * SCORE_BINS).floor().cast(pl.Int32).clip(upper_bound=SCORE_BINS - 1)
    return (
        scored.select("date", "model_version", "score", "label")
        .with_columns(bin=bin_of)
        .group_by("date", "model_version", "bin")
        .agg(
            sessions=pl.len(),
            score_sum=score.sum(),
            labelled=known.sum(),
            labelled_score_sum=pl.when(known).then(score).otherwise(0.0).sum(),
            buyers=label.sum(),
            log_loss_sum=pl.when(label)
            .then(-clipped.log())
            .when(known)
            .then(-(1 - clipped).log())
            .otherwise(0.0)
            .sum(),
        )
        .select(pl.col(name).cast(dtype) for name, dtype in BIN_SCHEMA.items())
    )


def _day_bins(
    lake: Lake, day: dt.date, parts: int, scores_version: int | None, labels_version: int | None
) -> pl.DataFrame:
    """BIN_SCHEMA aggregates of one day, its sessions taken in `parts` parts by the hash of session_id."""
    scores = lake.scan("scores", day, day, scores_version)
    labels = None if labels_version is None else lake.scan("sequences", day, day, labels_version)
    if scores is None:  # the day's files went between the row counts and the scan
        return pl.DataFrame(schema=BIN_SCHEMA)
    scores = scores.select("session_id", "score", "model_version")
    if labels is not None:
        labels = labels.select("session_id", "label").filter(pl.col("label").is_not_null())
    results = []
    for part in range(parts):
        mine = pl.col("session_id").hash() % parts == part
        these = scores.filter(mine) if parts > 1 else scores
        if labels is None:
            scored = these.with_columns(label=pl.lit(None, dtype=pl.Boolean))
        else:
            scored = these.join(labels.filter(mine) if parts > 1 else labels, on="session_id", how="left")
        results.append(bin_scores(scored.with_columns(date=pl.lit(day, dtype=pl.Date))).collect(engine="streaming"))
    if len(results) == 1:
        return results[0]
    return (
        pl.concat(results)
        .group_by("date", "model_version", "bin")
        .agg(pl.col(_SUMS).sum())
        .select(pl.col(name).cast(dtype) for name, dtype in BIN_SCHEMA.items())
    )


def champion_run(settings: Settings, champion: str | None) -> tuple[TrainingRun | None, str]:
    """The champion's training run, and why there is none ("" when it was read): without a champion,
    or with a tracking store that cannot give the run, the report still comes out, saying so."""
    if champion is None:
        return None, "No champion is registered yet, so there are no validation figures: `clickstream train --promote`."
    try:
        return read_training_run(settings, champion), ""
    except (ClickstreamError, MlflowException, OSError, KeyError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"The training run of champion v{champion} cannot be read ({reason}): no validation figures."


def read_training_run(settings: Settings, version: str) -> TrainingRun:
    """The training run of registered `version`: one run fetch (params, metrics, where it lives) and
    one download of its small `plots/` folder (ROC and calibration plots, the score histogram)."""
    run = tracking_client(settings).get_run(model_version(settings, version).run_id)
    with tempfile.TemporaryDirectory(prefix="clickstream-report-") as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{run.info.artifact_uri}/plots", dst_path=tmp))
        plots = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    params = run.data.params
    return TrainingRun(
        version=version,
        run_id=run.info.run_id,
        link=run_link(settings.tracking_uri, run.info.experiment_id, run.info.run_id),
        label=f"validation (held-out days {params['val_start']}..{params['val_end']}, at training time)",
        metrics=dict(run.data.metrics),
        plots=plots,
        histogram=validation_bins(plots.get(SCORE_HISTOGRAM)),
    )


def validation_bins(document: bytes | None) -> pl.DataFrame | None:
    """The logged validation histogram (models.evaluation.score_histogram) as score-bin rows (bin,
    sessions, score_sum, buyers, and every session labelled); None when the run logged none or
    counted other bins."""
    if document is None:
        return None
    fields = json.loads(document)
    if fields.get("bins") != SCORE_BINS:
        return None
    frame = pl.DataFrame(
        {name: fields[name] for name in ("bin", "sessions", "score_sum", "buyers")},
        schema={"bin": pl.Int32, "sessions": pl.Int64, "score_sum": pl.Float64, "buyers": pl.Int64},
    )
    return frame.with_columns(labelled=pl.col("sessions"), labelled_score_sum=pl.col("score_sum"))


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run as the report names it (HTML): a link to its page in the MLflow UI when the tracking
    URI is a server, else its id (a SQLite or file store has no UI until `mlflow ui` serves one)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return f"MLflow run {html.escape(run_id)} (experiment {html.escape(experiment_id)})"
    server = redacted(tracking_uri).partition("?")[0].partition("#")[0].rstrip("/")
    url = f"{server}/#/experiments/{experiment_id}/runs/{run_id}"
    return f'<a href="{html.escape(url)}">MLflow run {html.escape(run_id)}</a>'


def volume_section(lake: Lake, start: dt.date, end: dt.date) -> Section:
    """Events, sessions and quarantined rows per day (from Parquet row counts, no data read): a
    panel per kind that has rows; the kinds without any are named in the note instead."""
    counts = pl.DataFrame(
        {
            "date": pl.date_range(start, end, "1d", eager=True),
            **{name: _rows_per_day(lake, table, start, end) for name, table in _VOLUME_TABLES.items()},
        }
    )
    note = "Rows per day: events by event date, sessions by start date, quarantined rows by ingestion date."
    plotted = [name for name in _VOLUME_TABLES if counts[name].sum() > 0]
    empty = [name.replace("_", " ") for name in _VOLUME_TABLES if name not in plotted]
    if empty:
        note += f" No {' and no '.join(empty)} on these days."
    if not plotted:
        return Section("Volumes per day", note, table=html_table(counts))
    fig, axes = _figure(nrows=len(plotted), height=0.5 + 2 * len(plotted), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, plotted, strict=True):
        ax.bar(counts["date"].cast(pl.String).to_list(), counts[name].to_list(), color="#4c72b0")
        ax.set_ylabel(name.replace("_", " "))
    axes[-1].tick_params(axis="x", labelrotation=45)
    alt = f"{' and '.join(name.replace('_', ' ') for name in plotted)} per day"
    return Section("Volumes per day", note, (Plot(alt, _png(fig)),), html_table(counts))


_VOLUME_TABLES = {"events": "events", "sessions": "sequences", "quarantined_rows": "quarantine"}


def distribution_table(bins: pl.DataFrame) -> pl.DataFrame:
    """Per model version of `bins` (score_bins): sessions, mean score, median score and the share
    of scores >= 0.5. The median is interpolated within the score bin of the middle session, so
    it is within one bin width (1 / SCORE_BINS) of the exact one; the rest is exact."""
    per_bin = (
        bins.group_by("model_version", "bin")
        .agg(pl.col("sessions", "score_sum").sum())
        .sort("model_version", "bin")
        .with_columns(
            before=pl.col("sessions").cum_sum().over("model_version") - pl.col("sessions"),
            half=pl.col("sessions").sum().over("model_version") / 2,
        )
    )
    inside = (pl.col("half") - pl.col("before")) / pl.col("sessions")  # where the middle falls in its bin
    middle = pl.col("before") + pl.col("sessions") >= pl.col("half")
    return (
        per_bin.group_by("model_version")  # keeps each group's rows in bin order
        .agg(
            sessions=pl.col("sessions").sum(),
            mean_score=pl.col("score_sum").sum() / pl.col("sessions").sum(),
            median_score=((pl.col("bin") + inside) / SCORE_BINS).filter(middle).first(),
            share_over_half=pl.col("sessions").filter(pl.col("bin") >= SCORE_BINS // 2).sum()
            / pl.col("sessions").sum(),
        )
        .sort("model_version")
    )


def distribution_section(bins: pl.DataFrame) -> Section:
    """Histogram of buying-intent scores, one step curve per model version, from the score bins."""
    fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    per_bar = SCORE_BINS // HISTOGRAM_BINS
    for version in bins["model_version"].unique().sort().to_list():
        mine = bins.filter(pl.col("model_version") == version)
        counts = np.bincount(mine["bin"].to_numpy() // per_bar, mine["sessions"].to_numpy(), HISTOGRAM_BINS)
        ax.stairs(counts, edges, linewidth=1.5, label=f"v{version}")
    ax.set(xlabel="buying-intent score", ylabel="sessions", yscale="log", title="Score distribution")
    ax.legend()
    note = (
        f"{int(bins['sessions'].sum()):,} scored sessions. Medians are interpolated within "
        f"{1 / SCORE_BINS:g}-wide score bins."
    )
    plot = Plot("score distribution per model version", _png(fig))
    return Section("Score distribution", note, (plot,), html_table(distribution_table(bins)))


def trend_table(bins: pl.DataFrame) -> pl.DataFrame:
    """Per day of `bins` (score_bins): sessions, mean score, labelled sessions and their buy rate
    (null on a day without known outcomes), sorted by day."""
    labelled = pl.col("labelled").sum()
    return (
        bins.group_by("date")
        .agg(
            sessions=pl.col("sessions").sum(),
            mean_score=pl.col("score_sum").sum() / pl.col("sessions").sum(),
            labelled=labelled,
            buy_rate=pl.when(labelled > 0).then(pl.col("buyers").sum() / labelled),
        )
        .sort("date")
    )


def trend_section(bins: pl.DataFrame) -> Section:
    """Mean score against actual buy rate per day: a calibrated model's two lines move together, so
    a gap that opens is worth a look before any label-based figure can show it."""
    table = trend_table(bins)
    days = table["date"].cast(pl.String).to_list()
    fig, ax = _figure()
    ax.plot(days, table["mean_score"].to_list(), "o-", color="#4c72b0", label="mean score")
    ax.plot(days, table["buy_rate"].to_list(), "s--", color="#55a868", label="actual buy rate")
    ax.set(ylabel="share of sessions", title="Mean score and buy rate per day")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    note = "Every scored session of each day, whatever model scored it; the buy rate over those with a known outcome."
    return Section("Daily trend", note, (Plot("mean score and buy rate per day", _png(fig)),), html_table(table))


def psi_table(bins: pl.DataFrame, reference: np.ndarray) -> pl.DataFrame:
    """Per day of `bins` (score_bins): sessions, the population stability index of its scores against
    `reference` (sessions per score bin) and whether it passes PSI_THRESHOLD.

    PSI = sum over buckets of (share - reference share) * ln(share / reference share), on
    PSI_BUCKETS buckets of whole score bins that split the reference's sessions evenly (a bin goes to
    the bucket of its lowest session's rank, as deciles do in lift_table); an empty bucket counts as
    PSI_FLOOR of the sessions."""
    before = np.cumsum(reference) - reference
    bucket_of = np.minimum(before * PSI_BUCKETS // reference.sum(), PSI_BUCKETS - 1).astype(np.int32)
    expected = np.maximum(np.bincount(bucket_of, reference, PSI_BUCKETS) / reference.sum(), PSI_FLOOR)
    buckets = pl.DataFrame({"bucket": np.arange(PSI_BUCKETS, dtype=np.int32), "expected": expected})
    bucketed = pl.DataFrame({"bin": np.arange(SCORE_BINS, dtype=np.int32), "bucket": bucket_of})
    counted = bins.join(bucketed, on="bin").group_by("date", "bucket").agg(pl.col("sessions").sum())
    share = pl.max_horizontal(pl.col("sessions") / pl.col("sessions").sum().over("date"), pl.lit(PSI_FLOOR))
    return (
        counted.select("date")
        .unique()
        .join(buckets, how="cross")
        .join(counted, on=["date", "bucket"], how="left")
        .with_columns(pl.col("sessions").fill_null(0))
        .with_columns(share=share)
        .group_by("date")
        .agg(
            sessions=pl.col("sessions").sum(),
            psi=((pl.col("share") - pl.col("expected")) * (pl.col("share") / pl.col("expected")).log()).sum(),
        )
        .with_columns(drifted=pl.when(pl.col("psi") > PSI_THRESHOLD).then(pl.lit("drifted")).otherwise(pl.lit("")))
        .sort("date")
    )


def drift_section(bins: pl.DataFrame, champion: str | None, run: TrainingRun | None) -> Section:
    """Each day's champion scores against the champion's scores of its validation days, as PSI per
    day, the days past PSI_THRESHOLD flagged: the inputs have moved away from what it was tried on."""
    title = "Score drift against the validation days"
    if run is None or run.histogram is None:
        why = (
            "the champion's training run is not at hand"
            if run is None
            else "its training run logged no score histogram"
        )
        return Section(title, f"No drift figures: {why}.")
    mine = bins.filter(pl.col("model_version") == champion)
    if mine.height == 0:
        return Section(title, f"No day of this report was scored by the champion v{champion}.")
    table = psi_table(mine, _per_bin(run.histogram, "sessions")[0])
    flagged = table["drifted"] != ""
    fig, ax = _figure()
    days = table["date"].cast(pl.String).to_list()
    colors = np.where(flagged.to_numpy(), "#c44e52", "#4c72b0").tolist()
    ax.bar(days, table["psi"].to_list(), color=colors)
    ax.axhline(PSI_THRESHOLD, linestyle="--", color="grey", label=f"threshold {PSI_THRESHOLD:g}")
    ax.set(ylabel="PSI", title="Population stability index per day")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    note = (
        f"PSI of each day's scores by champion v{champion} against its {run.label}, over {PSI_BUCKETS} "
        f"buckets that split the validation sessions evenly; above {PSI_THRESHOLD:g} a day is flagged as "
        f"drifted ({int(flagged.sum())} of {table.height} days): its sessions no longer look like those "
        "the model was tried on."
    )
    return Section(title, note, (Plot("PSI per day against the validation days", _png(fig)),), html_table(table))


_LOGGED_PLOTS = {"roc.png": "ROC", "calibration.png": "calibration"}  # models.evaluation.write_plots


def validation_section(run: TrainingRun | None, unread: str) -> Section:
    """The champion's figures on its held-out validation days, as its training run measured them:
    each metric beside the GBM baseline's, the run's ROC and calibration plots, and lift by score
    decile from its score histogram. These exist from the first champion on, live days or not."""
    title = "Validation: the champion at training time"
    if run is None:
        return Section(title, unread)
    lstm, gbm = run.metrics.get("val_auc"), run.metrics.get("gbm_val_auc")
    note = (
        f"Champion v{run.version}, {run.label}: AUC {_shown(lstm)} (GBM baseline {_shown(gbm)}), "
        f"measured by its training run on days it did not fit on."
    )
    metrics = pl.DataFrame(
        {
            "metric": [shown for shown, _ in VALIDATION_METRICS],
            "LSTM": [run.metrics.get(f"val_{name}") for _, name in VALIDATION_METRICS],
            "GBM baseline": [run.metrics.get(f"gbm_val_{name}") for _, name in VALIDATION_METRICS],
        },
        schema={"metric": pl.String, "LSTM": pl.Float64, "GBM baseline": pl.Float64},
    )
    images = [
        Plot(f"{shown}, {run.label}", base64.b64encode(run.plots[name]).decode("ascii"))
        for name, shown in _LOGGED_PLOTS.items()
        if name in run.plots
    ]
    tables = html_table(metrics)
    if run.histogram is None:
        note += " Its run logged no score histogram, so there is no lift by decile."
    else:
        lift = lift_table(run.histogram)
        images.append(Plot(f"lift by score decile, {run.label}", _lift_png(lift, run.label)))
        tables += html_table(lift)
    return Section(title, note, tuple(images), tables)


def lift_table(bins: pl.DataFrame) -> pl.DataFrame:
    """Labelled sessions of `bins` (score_bins) by score decile (10 = highest scores): sessions,
    mean score, actual buy rate, and lift = decile buy rate / overall buy rate. Sorted by decile.

    Deciles are taken on the score bins, in order: a bin goes whole to the decile of its lowest
    session's rank, so sessions tied within a bin stay together and deciles may differ in size
    (or one may be empty) where many sessions share a bin. Where no bin holds two labelled
    sessions, these are the deciles of the sessions sorted by score."""
    per_bin = (
        bins.group_by("bin")
        .agg(
            sessions=pl.col("labelled").sum(),
            score_sum=pl.col("labelled_score_sum").sum(),
            buyers=pl.col("buyers").sum(),
        )
        .filter(pl.col("sessions") > 0)
        .sort("bin")
    )
    total, buyers = int(per_bin["sessions"].sum()), int(per_bin["buyers"].sum())
    overall = buyers / total if total else None
    before = pl.col("sessions").cum_sum() - pl.col("sessions")
    return (
        per_bin.with_columns(decile=(before * DECILES // max(total, 1) + 1).cast(pl.Int32))
        .group_by("decile")
        .agg(
            sessions=pl.col("sessions").sum(),
            mean_score=pl.col("score_sum").sum() / pl.col("sessions").sum(),
            buy_rate=pl.col("buyers").sum() / pl.col("sessions").sum(),
        )
        .with_columns(lift=pl.col("buy_rate") / overall if overall else pl.lit(None, dtype=pl.Float64))
        .sort("decile")
    )


def lift_section(bins: pl.DataFrame, waiting: str) -> Section:
    """Live: actual buy rate and lift per score decile of the labelled sessions scored after their
    model's training window (`bins`: holdout.after_training); `waiting` says why there are none."""
    title = "Live: lift by score decile"
    table = lift_table(bins)
    if table.height == 0 or table["lift"].is_null().all():
        return Section(
            title, waiting or "No labelled session scored after its model's training window has both outcomes yet."
        )
    labelled = bins.filter(pl.col("labelled") > 0)
    subset = f"live ({labelled['date'].min()}..{labelled['date'].max()})"
    top = table.filter(table["decile"] == table["decile"].max())["lift"][0]
    note = (
        f"{subset}: {table['sessions'].sum():,} labelled sessions after their model's training window; "
        f"the top decile buys {top:.1f}x as often as average. Deciles are taken on "
        f"{1 / SCORE_BINS:g}-wide score bins, so sessions tied within a bin stay in one decile."
    )
    return Section(title, note, (Plot(f"lift by score decile, {subset}", _lift_png(table, subset)),), html_table(table))


def _lift_png(table: pl.DataFrame, subset: str) -> str:
    """Actual buy rate (bars) and mean score (line) per score decile of lift_table."""
    fig, ax = _figure()
    ax.bar(table["decile"].to_list(), table["buy_rate"].to_list(), color="#55a868", label="actual buy rate")
    ax.plot(table["decile"].to_list(), table["mean_score"].to_list(), "k.-", label="mean score")
    ax.set(xlabel="score decile (10 = highest)", ylabel="buy rate", title=f"Buy rate by score decile, {subset}")
    ax.set_xticks(range(1, DECILES + 1))
    ax.legend()
    return _png(fig)


@dataclass(frozen=True)
class BinnedQuality:
    """Quality of scores against known labels from counts per score bin (index = bin). NaN where
    undefined (one class). AUC and PR-AUC count the sessions of one bin as tied, so they are exact
    up to the order within a bin; log loss and calibration error are exact."""

    sessions: int
    auc: float
    pr_auc: float
    logloss: float
    calibration_error: float
    positives: np.ndarray  # buyers per bin
    negatives: np.ndarray  # labelled non-buyers per bin
    score_sums: np.ndarray  # sum of the labelled sessions' scores per bin


def binned_quality(bins: pl.DataFrame) -> BinnedQuality:
    """AUC, PR-AUC, log loss and calibration error of the labelled sessions of `bins` (score_bins),
    pooled over its rows."""
    labelled, buyers, score_sums, log_loss = _per_bin(bins, "labelled", "buyers", "labelled_score_sum", "log_loss_sum")
    sessions = int(labelled.sum())
    _, predicted, observed = _calibration(labelled, score_sums, buyers)
    return BinnedQuality(
        sessions=sessions,
        auc=binned_auc(buyers, labelled - buyers),
        pr_auc=binned_average_precision(buyers, labelled - buyers),
        logloss=float(log_loss.sum() / sessions) if sessions else math.nan,
        calibration_error=float(np.abs(predicted - observed).sum() / sessions) if sessions else math.nan,
        positives=buyers,
        negatives=labelled - buyers,
        score_sums=score_sums,
    )


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve from buyers and non-buyers per score bin (ascending): the chance
    that a buyer's bin is above a non-buyer's, a pair within one bin counted half. This is the
    exact AUC up to pairs within a bin; NaN with a single class."""
    total_positive, total_negative = positives.sum(), negatives.sum()
    if total_positive == 0 or total_negative == 0:
        return math.nan
    below = np.cumsum(negatives) - negatives
    return float((positives * (below + negatives / 2)).sum() / (total_positive * total_negative))


def binned_average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Average precision (PR-AUC) with each non-empty score bin as one threshold, highest first:
    sklearn's definition with the sessions of a bin tied. NaN with a single class."""
    total_positive = positives.sum()
    if total_positive == 0 or negatives.sum() == 0:
        return math.nan
    filled = (positives + negatives) > 0
    gained, lost = positives[filled][::-1], negatives[filled][::-1]
    true_positive = np.cumsum(gained)
    precision = true_positive / (true_positive + np.cumsum(lost))
    return float((gained / total_positive * precision).sum())


def _calibration(
    labelled: np.ndarray, score_sums: np.ndarray, buyers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per calibration bin (CALIBRATION_BINS equal-width ones, each a run of whole score bins, as
    models.evaluation bins scores): labelled sessions, sum of their scores, buyers."""
    coarse = np.arange(SCORE_BINS) * CALIBRATION_BINS // SCORE_BINS
    return tuple(np.bincount(coarse, values, CALIBRATION_BINS) for values in (labelled, score_sums, buyers))


def _per_bin(bins: pl.DataFrame, *columns: str) -> list[np.ndarray]:
    """Sums of `columns` over the rows of `bins`, each as an array indexed by score bin (0 where empty)."""
    sums = bins.group_by("bin").agg(pl.col(columns).sum())
    at = sums["bin"].to_numpy()
    arrays = []
    for name in columns:
        values = np.zeros(SCORE_BINS)
        values[at] = sums[name].to_numpy()
        arrays.append(values)
    return arrays


def champion_section(bins: pl.DataFrame, champion: str | None, waiting: str) -> Section:
    """Live: ROC and calibration of the champion's scores on the latest (up to LABELLED_DAYS) days
    that have both outcomes; without a registered champion, of the most recent model version scored.
    `bins`: score_bins rows after their model's training window (holdout.after_training); `waiting`
    says why the champion has no such day yet ("" when it has labelled ones)."""
    title = "Live: the champion after its training window"
    if bins.height == 0 and champion is None:
        return Section(title, waiting)
    version = champion if champion is not None else _latest_version(bins)
    mine = bins.filter((pl.col("model_version") == version) & (pl.col("labelled") > 0))
    both = (
        mine.group_by("date")
        .agg(pl.col("labelled", "buyers").sum())
        .filter((pl.col("buyers") > 0) & (pl.col("buyers") < pl.col("labelled")))
    )
    days = both["date"].sort().tail(LABELLED_DAYS).to_list()
    if not days:
        return Section(
            title,
            waiting or f"No day scored by v{version} after its training window has both buyers and non-buyers yet.",
        )
    quality = binned_quality(mine.filter(pl.col("date").is_in(days)))
    window = f"{days[0]}..{days[-1]}"
    subset = f"live {window}"
    images = (
        Plot(f"ROC, {subset}", _roc_png(quality, f"v{version}", subset)),
        Plot(f"calibration, {subset}", _calibration_png(quality, f"v{version}", subset)),
    )
    who = "champion" if champion is not None else "latest scored model (no champion registered)"
    note = (
        f"Live: {who} v{version} on {quality.sessions:,} labelled sessions of {window}, all after its training window: "
        f"AUC {quality.auc:.3f}, "
        f"PR-AUC {quality.pr_auc:.3f}, log loss {quality.logloss:.3f}, "
        f"calibration error {quality.calibration_error:.3f}. "
        f"AUC and PR-AUC are computed on {1 / SCORE_BINS:g}-wide score bins: exact up to ties within a bin."
    )
    return Section(title, note, images)


def _roc_png(quality: BinnedQuality, name: str, subset: str) -> str:
    """The ROC curve through the score bins' thresholds, highest first."""
    true_positive = np.concatenate([[0.0], np.cumsum(quality.positives[::-1])])
    false_positive = np.concatenate([[0.0], np.cumsum(quality.negatives[::-1])])
    fig, ax = _figure(height=5, width=5)
    rates = false_positive / false_positive[-1], true_positive / true_positive[-1]
    draw_roc(ax, [(*rates, f"{name} (AUC {quality.auc:.3f})")], subset)
    return _png(fig)


def _calibration_png(quality: BinnedQuality, name: str, subset: str) -> str:
    """Mean score against buy rate per calibration bin that holds labelled sessions."""
    labelled = quality.positives + quality.negatives
    bins = _calibration(labelled, quality.score_sums, quality.positives)
    fig, ax = _figure(height=5, width=5)
    draw_calibration(ax, [(*bins, f"{name} (ECE {quality.calibration_error:.3f})")], subset)
    return _png(fig)


def top_sessions(settings: Settings, day: dt.date) -> pl.DataFrame:
    """The TOP_SESSIONS highest-scored sessions of `day`, ties by session id: session_id, score, events."""
    top = query_scores(settings, day, day, top=TOP_SESSIONS)
    return top.select("session_id", "score", events="n_events")


def top_sessions_section(settings: Settings, day: dt.date) -> Section:
    """The sessions most likely to buy on the report's latest day, for a look at what they did."""
    note = (
        f"The {TOP_SESSIONS} highest scores of {day}, the report's latest day (ties by session id); "
        "`clickstream session ID` shows where a session's intent rose."
    )
    return Section("Top sessions", note, table=html_table(top_sessions(settings, day)))


def timeline_section(history: pl.DataFrame, champion: str | None) -> Section:
    """Every champion decision by the time it was taken: the AUCs of the challenger and of the
    champion it faced (same sessions), marked by action, with the current champion named."""
    title = "Champion and challengers over time"
    now = f"The current champion is v{champion}" if champion else "There is no champion"
    if history.height == 0:
        return Section(title, f"{now}; no champion decision is recorded yet.")
    fig, ax = _figure()
    ax.plot(
        history["decided_at"].to_list(),
        history["champion_auc"].to_list(),
        "s--",
        color="#4c72b0",
        label="champion AUC it faced",
    )
    for action, marker, color in _ACTION_MARKERS:
        rows = history.filter(pl.col("action") == action)
        if rows.height:
            ax.plot(
                rows["decided_at"].to_list(),
                rows["challenger_auc"].to_list(),
                marker,
                color=color,
                markersize=9,
                linestyle="none",
                label=f"challenger: {action}",
            )
    aucs = history.select(pl.concat_list("challenger_auc", "champion_auc").explode().drop_nulls())
    low, high = (aucs.min().item(), aucs.max().item()) if aucs.height else (0.5, 1.0)
    when = history["decided_at"].to_list()
    ax.set(xlabel="decided at (UTC)", ylabel="AUC", title="Champion decisions", xlim=_padded(when))
    ax.set_ylim(low - 0.02, high + 0.02)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize="small")
    made = history.filter(pl.col("champion_after") == champion).filter(pl.col("action") != "no-op").tail(1)
    since = (
        f" since {made['decided_at'][0]:%Y-%m-%d %H:%M} UTC ({made['action'][0]} by {made['decided_by'][0]})"
        if champion and made.height
        else ""
    )
    note = (
        f"{now}{since}. At each gate the challenger and the champion are scored on the same labelled sessions; "
        "the challenger is promoted only when its AUC beats the champion's by more than the margin. "
        "Promotions by hand and rollbacks carry a person's reason instead."
    )
    return Section(
        title, note, (Plot("AUC at each champion decision", _png(fig)),), html_table(decision_table(history))
    )


def decision_table(history: pl.DataFrame) -> pl.DataFrame:
    """The decision history (history.DECISIONS) in 9 short columns that fit the page: each version
    with its AUC in one cell, the time to the minute."""
    return history.select(
        pl.col("decided_at").dt.strftime("%Y-%m-%d %H:%M").alias("decided (UTC)"),
        pl.col("decided_by").alias("by"),
        "action",
        _version_with_auc("challenger_version", "challenger_auc").alias("challenger (AUC)"),
        _version_with_auc("champion_version", "champion_auc").alias("champion (AUC)"),
        "margin",
        pl.format("{}..{}", "validation_start", "validation_end").alias("days"),
        "sessions",
        "reason",
    )


def _version_with_auc(version: str, auc: str) -> pl.Expr:
    """ "v3 (0.8123)", "v3" without an AUC, null without a version."""
    with_auc = pl.format("v{} ({})", version, pl.col(auc).round(4).cast(pl.String))
    return pl.when(pl.col(auc).is_not_null()).then(with_auc).otherwise(pl.format("v{}", version))


_ACTION_MARKERS = (
    ("promoted", "o", "#55a868"),
    ("rejected", "x", "#c44e52"),
    ("no-op", ".", "#8172b2"),
)


def _padded(moments: list[dt.datetime]) -> tuple[dt.datetime, dt.datetime]:
    """An x range around `moments` that stays readable when they are seconds apart (or one)."""
    margin = max((max(moments) - min(moments)) * 0.05, dt.timedelta(minutes=1))
    return min(moments) - margin, max(moments) + margin


def html_table(frame: pl.DataFrame) -> str:
    """A small frame as an escaped HTML table; floats to 4 decimals, nulls blank."""
    cells = format_cells(frame)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in cells.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(value)}</td>" for value in row) + "</tr>" for row in cells.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_versions(version: dict[str, object] | None) -> str:
    """The lake's table versions a model learned from, as the report's header names them."""
    if version is None or version["sequences_version"] is None:
        return ""
    sequences, events = version["sequences_version"], version["events_version"]
    return f" (learned from sequences version {sequences}, events version {events})"


def render(
    title: str,
    sections: list[Section],
    model_name: str,
    champion: str | None,
    caveat: str = "",
    learned: str = "",
    run_link: str = "",
) -> str:
    """The whole HTML document: head with inline CSS, a header line (the champion, the data
    versions it learned from and its training run, `run_link` being HTML), the caveat on the live
    figures (if any), then each section."""
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model = f"{model_name}, champion v{champion}{learned}" if champion else f"{model_name}, no champion registered"
    trained = f" Trained in {run_link}." if run_link else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(model)}; generated {made}.{trained}</p>',
    ]
    if caveat:
        parts.append(f'<p class="caveat">{html.escape(caveat)}</p>')
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2><p>{html.escape(section.note)}</p>")
        parts.extend(
            f'<img alt="{html.escape(plot.alt)}" src="data:image/png;base64,{plot.png}">' for plot in section.images
        )
        parts.append(f"{section.table}</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;background:#fff}"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}.meta{color:#666}"
    ".caveat{border-left:3px solid #dd8452;padding-left:.6em}"
    "img{display:block;max-width:100%;margin:1em 0}"
    "table{border-collapse:collapse;font-size:.9em;display:block;max-width:100%;overflow-x:auto;margin:1em 0}"
    "th,td{padding:.2em .6em;border-bottom:1px solid #eee;vertical-align:top}"
    "th{text-align:left}td{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}"
)


def _shown(value: float | None) -> str:
    """A metric to 3 decimals, or "not logged"."""
    return "not logged" if value is None else f"{value:.3f}"


def _rows_per_day(lake: Lake, table: str, start: dt.date, end: dt.date) -> list[int]:
    """Row count of each day of `table` in [start, end] from the commit log's statistics (0 when absent)."""
    rows = lake.rows_per_date(table)
    return [rows.get(start + dt.timedelta(days=offset), 0) for offset in range((end - start).days + 1)]


def _latest_version(bins: pl.DataFrame) -> str:
    return bins.sort("date", "model_version")["model_version"][-1]


def _figure(nrows: int = 1, height: float = 3.5, sharex: bool = False, width: float = 8) -> tuple[Figure, object]:
    matplotlib.use("Agg")

    return plt.subplots(nrows=nrows, figsize=(width, height), sharex=sharex)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
