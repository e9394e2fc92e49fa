"""One self-contained HTML report for analysts: volumes per day, the score distribution,
lift by score decile against actual buy rates, ROC and calibration of the champion on the
latest labelled days, and the champion decisions over time.

Quality figures (lift, AUC, calibration) use only sessions that start after the training window
of the model that scored them (pipeline.serve.holdout); when the report's days overlap it, one
sentence under the title says how many labelled sessions were left out and why.

Plots are PNGs embedded as base64 (matplotlib's Agg backend), so the one
file opens anywhere offline. A section without data says so instead of failing the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import polars as pl

from clickstream.models.evaluation import evaluate, write_plots
from clickstream.pipeline.core.config import CHAMPION, Settings
from clickstream.pipeline.core.lake import Lake
from clickstream.pipeline.serve.history import decisions, model_versions
from clickstream.pipeline.serve.holdout import after_training
from clickstream.pipeline.serve.output import check_out, format_cells, replace_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELLED_DAYS = 7  # ROC and calibration use the latest days with known outcomes, at most this many
DECILES = 10


@dataclass(frozen=True)
class Section:
    """One titled part of the report: a note, then any images (base64 PNG) and an HTML table."""

    title: str
    note: str
    images: tuple[str, ...] = ()
    table: str = ""


def write_report(settings: Settings, start: dt.date | None, end: dt.date | None, out: Path) -> str:
    """Write the HTML report for scored dates in [start, end] (default: every scored date) to
    `out` atomically; returns a one-line summary. NoDataError when no date in the window was scored."""
    check_out(out, settings.lake)  # before the work, not after it
    lake = Lake(settings.lake)
    scored_days = lake.require_dates("scores", start, end, "run `clickstream score` first")
    first, last = scored_days[0], scored_days[-1]
    scores = scored_sessions(lake, first, last)
    versions = model_versions(settings)
    champion_row = next((v for v in versions.iter_rows(named=True) if CHAMPION in v["aliases"]), None)
    champion = champion_row["version"] if champion_row else None
    holdout = after_training(scores, versions)
    sections = [
        volume_section(lake, first, last),
        distribution_section(scores),
        lift_section(holdout.sessions),
        champion_section(holdout.sessions, champion),
        timeline_section(decisions(settings), champion),
    ]
    title = f"clickstream report {first}..{last}"
    learned = _data_versions(champion_row)
    document = render(title, sections, settings.model_name, champion, holdout.sentence, learned)
    replace_file(Path(out), lambda tmp: Path(tmp).write_text(document, encoding="utf-8"), lake=settings.lake)
    plots = sum(len(s.images) for s in sections)
    return f"report for {first}..{last}: {scores.height:,} scored sessions, {plots} plots -> {out}"


def scored_sessions(lake: Lake, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Scores of [start, end] with the session's label (null when unknown), sorted by date, session_id."""
    scores = lake.scan("scores", start, end)
    assert scores is not None  # the caller checked that these dates hold scores
    labels = lake.scan("sequences", start, end)
    frame = scores.select("date", "session_id", "n_events", "score", "model_version")
    if labels is None:
        frame = frame.with_columns(label=pl.lit(None, dtype=pl.Boolean))
    else:
        frame = frame.join(labels.select("date", "session_id", "label"), on=["date", "session_id"], how="left")
    return frame.sort("date", "session_id").collect()


def volume_section(lake: Lake, start: dt.date, end: dt.date) -> Section:
    """Events, sessions and quarantined rows per day (from Parquet row counts, no data read)."""
    counts = pl.DataFrame(
        {
            "date": pl.date_range(start, end, "1d", eager=True),
            **{name: _rows_per_day(lake, table, start, end) for name, table in _VOLUME_TABLES.items()},
        }
    )
    fig, axes = _figure(nrows=3, height=6.5, sharex=True)
    for ax, name in zip(axes, _VOLUME_TABLES, strict=True):
        ax.bar(counts["date"].cast(pl.String).to_list(), counts[name].to_list(), color="#4c72b0")
        ax.set_ylabel(name.replace("_", " "))
    axes[-1].tick_params(axis="x", labelrotation=45)
    note = "Rows per day: events by event date, sessions by start date, quarantined rows by ingestion date."
    return Section("Volumes per day", note, (_png(fig),), html_table(counts))


_VOLUME_TABLES = {"events": "events", "sessions": "sequences", "quarantined_rows": "quarantine"}


def distribution_section(scores: pl.DataFrame) -> Section:
    """Histogram of buying-intent scores, one step curve per model version."""
    fig, ax = _figure()
    for version in scores["model_version"].unique().sort().to_list():
        part = scores.filter(pl.col("model_version") == version)["score"].to_numpy()
        ax.hist(part, bins=50, range=(0, 1), histtype="step", linewidth=1.5, label=f"v{version}")
    ax.set(xlabel="buying-intent score", ylabel="sessions", yscale="log", title="Score distribution")
    ax.legend()
    summary = (
        scores.group_by("model_version")
        .agg(
            sessions=pl.len(),
            mean_score=pl.col("score").mean(),
            median_score=pl.col("score").median(),
            share_over_half=(pl.col("score") >= 0.5).mean(),
        )
        .sort("model_version")
    )
    return Section("Score distribution", f"{scores.height:,} scored sessions.", (_png(fig),), html_table(summary))


def lift_table(scores: pl.DataFrame) -> pl.DataFrame:
    """Labelled sessions by score decile (10 = highest scores; ties broken by session_id): sessions,
    mean score, actual buy rate, and lift = decile buy rate / overall buy rate. Sorted by decile."""
    labelled = scores.filter(pl.col("label").is_not_null()).sort("score", "session_id")
    overall = labelled["label"].mean()
    return (
        labelled.with_columns(decile=(pl.int_range(pl.len()) * DECILES // pl.len() + 1).cast(pl.Int32))
        .group_by("decile")
        .agg(sessions=pl.len(), mean_score=pl.col("score").mean(), buy_rate=pl.col("label").cast(pl.Float64).mean())
        .with_columns(lift=pl.col("buy_rate") / overall if overall else pl.lit(None, dtype=pl.Float64))
        .sort("decile")
    )


def lift_section(scores: pl.DataFrame) -> Section:
    """Actual buy rate and lift per score decile, where labels are known."""
    table = lift_table(scores)
    if table.height == 0 or table["lift"].is_null().all():
        return Section(
            "Lift by score decile",
            "No scored session after its model's training window has a known outcome.",
        )
    fig, ax = _figure()
    ax.bar(table["decile"].to_list(), table["buy_rate"].to_list(), color="#55a868", label="actual buy rate")
    ax.plot(table["decile"].to_list(), table["mean_score"].to_list(), "k.-", label="mean score")
    ax.set(xlabel="score decile (10 = highest)", ylabel="buy rate", title="Buy rate by score decile")
    ax.set_xticks(range(1, DECILES + 1))
    ax.legend()
    top = table.filter(table["decile"] == table["decile"].max())["lift"][0]
    note = (
        f"{table['sessions'].sum():,} labelled sessions after their model's training window; "
        f"the top decile buys {top:.1f}x as often as average."
    )
    return Section("Lift by score decile", note, (_png(fig),), html_table(table))


def champion_section(scores: pl.DataFrame, champion: str | None) -> Section:
    """ROC and calibration of the champion's scores on the latest (up to LABELLED_DAYS) days that
    have both outcomes; without a registered champion, of the most recent model version scored.
    `scores`: only sessions after their model's training window (holdout.after_training)."""
    title = "Champion on the latest labelled days"
    if scores.height == 0 and champion is None:
        return Section(title, "No scored session falls after the training window of the model that scored it.")
    version = champion if champion is not None else _latest_version(scores)
    mine = scores.filter((pl.col("model_version") == version) & pl.col("label").is_not_null())
    both = mine.group_by("date").agg(pl.col("label").any() & ~pl.col("label").all()).filter(pl.col("label"))
    days = both["date"].sort().tail(LABELLED_DAYS).to_list()
    if not days:
        return Section(
            title, f"No day scored by v{version} after its training window has both buyers and non-buyers yet."
        )
    subset = mine.filter(pl.col("date").is_in(days))
    labels, values = subset["label"].to_numpy(), subset["score"].to_numpy()
    quality = evaluate(labels, values, subset["n_events"].to_numpy())
    window = f"{days[0]}..{days[-1]}"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_plots(labels, {f"v{version}": values}, Path(tmp), subset=window)
        images = tuple(base64.b64encode(p.read_bytes()).decode("ascii") for p in paths)
    who = "champion" if champion is not None else "latest scored model (no champion registered)"
    note = (
        f"{who} v{version} on {subset.height:,} labelled sessions of {window}, all after its training window: "
        f"AUC {quality.auc:.3f}, "
        f"PR-AUC {quality.pr_auc:.3f}, log loss {quality.logloss:.3f}, "
        f"calibration error {quality.calibration_error:.3f}."
    )
    return Section(title, note, images)


def timeline_section(history: pl.DataFrame, champion: str | None) -> Section:
    """Every champion decision by the time it was taken: the AUCs of the challenger and of the
    champion it faced (same sessions), marked by action, with the current champion named."""
    title = "Champion and challengers over time"
    now = f"The current champion is v{champion}" if champion else "There is no champion"
    if history.height == 0:
        return Section(title, f"{now}; no champion decision is recorded yet.")
    fig, ax = _figure()
    ax.plot(history["decided_at"].to_list(), history["champion_auc"].to_list(), "s--", color="#4c72b0",
            label="champion AUC it faced")
    for action, marker, color in _ACTION_MARKERS:
        rows = history.filter(pl.col("action") == action)
        if rows.height:
            ax.plot(rows["decided_at"].to_list(), rows["challenger_auc"].to_list(), marker, color=color,
                    markersize=9, linestyle="none", label=f"challenger: {action}")
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
    table = history.drop("decision_id", "champion_after")
    return Section(title, note, (_png(fig),), html_table(table))


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
) -> str:
    """The whole HTML document: head with inline CSS, a header line (the champion and the data
    versions it learned from), the caveat on the quality figures (if any), then each section."""
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model = f"{model_name}, champion v{champion}{learned}" if champion else f"{model_name}, no champion registered"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(model)}; generated {made}.</p>',
    ]
    if caveat:
        parts.append(f'<p class="caveat">{html.escape(caveat)}</p>')
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2><p>{html.escape(section.note)}</p>")
        parts.extend(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{image}">'
                     for image in section.images)
        parts.append(f"{section.table}</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;background:#fff}"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}.meta{color:#666}"
    ".caveat{border-left:3px solid #dd8452;padding-left:.6em}"
    "img{display:block;max-width:100%;margin:1em 0}"
    "table{border-collapse:collapse;font-size:.9em}th,td{padding:.2em .8em;border-bottom:1px solid #eee}"
    "td{text-align:right;font-variant-numeric:tabular-nums}"
)


def _rows_per_day(lake: Lake, table: str, start: dt.date, end: dt.date) -> list[int]:
    """Row count of each day of `table` in [start, end] from the commit log's statistics (0 when absent)."""
    rows = lake.rows_per_date(table)
    return [rows.get(start + dt.timedelta(days=offset), 0) for offset in range((end - start).days + 1)]


def _latest_version(scores: pl.DataFrame) -> str:
    return scores.sort("date", "model_version")["model_version"][-1]


def _figure(nrows: int = 1, height: float = 3.5, sharex: bool = False) -> tuple[Figure, object]:
    matplotlib.use("Agg")

    return plt.subplots(nrows=nrows, figsize=(8, height), sharex=sharex)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
