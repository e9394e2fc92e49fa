"""How good a buying-intent score is: ranking (AUC, PR-AUC), probability quality
(log loss, expected calibration error), AUC per session-length bucket, the ROC
and calibration plots logged with every run, and the choice of calibration by held-out
calibration error. Pure functions of labels and scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from clickstream.models.calibration import METHODS, Calibration, fit_calibration, logit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# (metric suffix, shortest, longest) in events; None = no upper bound
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3_4", 3, 4),
    ("5_9", 5, 9),
    ("10plus", 10, None),
)
CALIBRATION_BINS = 10
SCORE_BINS = 1000  # equal-width bins of [0, 1] (the last holds 1.0) in which the report counts scores
SCORE_HISTOGRAM = "score_histogram.json"  # a run's validation scores per score bin, beside its plots


@dataclass(frozen=True)
class Evaluation:
    """Quality of one set of scores against known labels. NaN where undefined (one class)."""

    n_sessions: int
    positive_rate: float
    auc: float
    pr_auc: float
    logloss: float
    calibration_error: float
    auc_by_length: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric names for MLflow (`<prefix>auc`, `<prefix>auc_len_3_4`, ...), NaN ones left out."""
        values = {
            f"{prefix}auc": self.auc,
            f"{prefix}pr_auc": self.pr_auc,
            f"{prefix}logloss": self.logloss,
            f"{prefix}calibration_error": self.calibration_error,
            f"{prefix}positive_rate": self.positive_rate,
            **{f"{prefix}auc_len_{name}": value for name, value in self.auc_by_length.items()},
        }
        return {name: float(value) for name, value in values.items() if not math.isnan(value)}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold a single class."""
    labels = np.asarray(labels, dtype=bool)
    if labels.size == 0 or labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, scores))


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |predicted - observed buy rate| over equal-width score bins, weighted by bin size."""
    if np.asarray(labels).size == 0:
        return math.nan
    counts, predicted, observed = _calibration_bins(labels, scores, bins)
    return float(np.abs(predicted - observed).sum() / counts.sum())


def _calibration_bins(
    labels: np.ndarray, scores: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width score bin: session count, sum of scores, sum of labels."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    bin_of = np.minimum((scores * bins).astype(np.int64), bins - 1)
    return (
        np.bincount(bin_of, minlength=bins),
        np.bincount(bin_of, weights=scores, minlength=bins),
        np.bincount(bin_of, weights=labels, minlength=bins),
    )


def evaluate(labels: np.ndarray, scores: np.ndarray, lengths: np.ndarray) -> Evaluation:
    """All metrics for scores in [0, 1] of sessions with known labels and their event counts."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths)
    two_classes = labels.any() and not labels.all()
    by_length = {}
    for name, shortest, longest in LENGTH_BUCKETS:
        inside = (lengths >= shortest) & (lengths <= (longest if longest is not None else np.inf))
        by_length[name] = auc(labels[inside], scores[inside])
    return Evaluation(
        n_sessions=int(labels.size),
        positive_rate=float(labels.mean()) if labels.size else math.nan,
        auc=auc(labels, scores),
        pr_auc=float(average_precision_score(labels, scores)) if two_classes else math.nan,
        logloss=float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[False, True]))
        if labels.size
        else math.nan,
        calibration_error=expected_calibration_error(labels, scores),
        auc_by_length=by_length,
    )


def write_plots(
    labels: np.ndarray, scores: dict[str, np.ndarray], out_dir: Path, subset: str = "validation"
) -> list[Path]:
    """roc.png and calibration.png in out_dir, one curve per named score set, titled with the
    `subset` they are measured on; returns both paths."""
    matplotlib.use("Agg")

    labels = np.asarray(labels, dtype=bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_path, calibration_path = out_dir / "roc.png", out_dir / "calibration.png"

    fig, ax = plt.subplots(figsize=(5, 5))
    curves = [
        (*roc_curve(labels, values)[:2], f"{name} (AUC {auc(labels, values):.3f})") for name, values in scores.items()
    ]
    draw_roc(ax, curves, subset)
    fig.savefig(roc_path, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    bins = []
    for name, values in scores.items():
        ece = expected_calibration_error(labels, values)
        bins.append((*_calibration_bins(labels, values, CALIBRATION_BINS), f"{name} (ECE {ece:.3f})"))
    draw_calibration(ax, bins, subset)
    fig.savefig(calibration_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [roc_path, calibration_path]


def draw_roc(ax: Axes, curves: list[tuple[np.ndarray, np.ndarray, str]], subset: str) -> None:
    """ROC curves, each (false positive rates, true positive rates, legend label), beside chance,
    titled with the `subset` they are measured on: the run's plot and the analysts' report draw alike."""
    for false_positive, true_positive, label in curves:
        ax.plot(false_positive, true_positive, label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {subset}")
    ax.legend(loc="lower right")


def draw_calibration(ax: Axes, curves: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], subset: str) -> None:
    """Calibration curves, each (sessions, score sums, buyers per score bin, legend label): mean score
    against buy rate in every bin that holds sessions, beside the diagonal, titled with `subset`."""
    for counts, predicted, observed, label in curves:
        filled = counts > 0
        ax.plot(predicted[filled] / counts[filled], observed[filled] / counts[filled], marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="mean predicted buy probability", ylabel="observed buy rate", title=f"Calibration, {subset}")
    ax.legend(loc="upper left")


def score_histogram(labels: np.ndarray, scores: np.ndarray) -> dict[str, object]:
    """Sessions, buyers and the sum of scores per non-empty score bin (SCORE_BINS of them, each score
    binned as the float32 the scores table stores): what the report needs to set the validation
    days' lift and score distribution beside the scored days' without holding a session."""
    values = np.clip(np.asarray(scores, dtype=np.float32).astype(np.float64), 0.0, 1.0)
    bin_of = np.minimum((values * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    sums = {
        "sessions": np.bincount(bin_of, minlength=SCORE_BINS),
        "buyers": np.bincount(bin_of[np.asarray(labels, dtype=bool)], minlength=SCORE_BINS),
        "score_sum": np.bincount(bin_of, weights=values, minlength=SCORE_BINS),
    }
    filled = sums["sessions"] > 0
    return {
        "bins": SCORE_BINS,
        "bin": np.flatnonzero(filled).tolist(),
        **{name: column[filled].tolist() for name, column in sums.items()},
    }


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration fitted on all validation sessions, and how each method did on held-out halves."""

    calibration: Calibration
    heldout_ece: dict[str, float]  # by method: expected calibration error, each half scored by the other's fit

    @property
    def ece(self) -> float:
        """Held-out expected calibration error of the chosen method."""
        return self.heldout_ece[self.calibration.method]


def choose_calibration(labels: np.ndarray, scores: np.ndarray) -> CalibrationChoice:
    """The method of METHODS with the lowest held-out calibration error on these labelled sessions
    (uncalibrated `scores`, in [0, 1]), fitted on all of them. The halves interleave the sessions
    in their given (time) order, so both span the same days. Deterministic."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = logit(scores)
    halves = np.arange(labels.size) % 2 == 0
    heldout = {}
    for method in METHODS:
        calibrated = np.empty_like(logits)
        for fit_on in (halves, ~halves):
            fitted = fit_calibration(labels[fit_on], logits[fit_on], method)
            calibrated[~fit_on] = fitted.probability(torch.from_numpy(logits[~fit_on])).numpy()
        heldout[method] = expected_calibration_error(labels, calibrated)
    best = min(METHODS, key=lambda method: heldout[method])  # min keeps the first of equals
    return CalibrationChoice(fit_calibration(labels, logits, best), heldout)
