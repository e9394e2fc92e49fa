"""Evaluation: AUC, PR-AUC, log loss, calibration error, AUC by session length, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream.models.evaluation import auc, evaluate, expected_calibration_error, write_plots


def test_given_scores_that_rank_every_buyer_first_then_auc_and_pr_auc_are_one() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    scores = np.where(labels, 0.9, 0.1)

    result = evaluate(labels, scores, np.ones(6))

    assert result.auc == 1.0
    assert result.pr_auc == 1.0
    assert result.logloss < 0.11
    assert auc(labels, 1 - scores) == 0.0


def test_given_one_class_then_ranking_metrics_are_nan_and_left_out_of_the_logged_metrics() -> None:
    result = evaluate(np.zeros(5, dtype=bool), np.linspace(0, 1, 5), np.arange(1, 6))

    assert math.isnan(result.auc) and math.isnan(result.pr_auc)
    metrics = result.metrics("val_")
    assert "val_auc" not in metrics and "val_pr_auc" not in metrics
    assert metrics["val_positive_rate"] == 0.0
    assert "val_logloss" in metrics and "val_calibration_error" in metrics


def test_given_a_constant_score_far_from_the_buy_rate_then_calibration_error_is_the_gap() -> None:
    labels = np.array([1, 0] * 50, dtype=bool)

    assert math.isclose(expected_calibration_error(labels, np.full(100, 0.9)), 0.4, abs_tol=1e-9)
    assert math.isclose(expected_calibration_error(labels, np.full(100, 0.5)), 0.0, abs_tol=1e-9)


def test_given_sessions_of_each_length_then_each_bucket_gets_its_own_auc() -> None:
    lengths = np.array([1, 1, 2, 2, 3, 4, 5, 9, 10, 200])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1], dtype=bool)
    # right order in buckets 1, 3-4 and 10+, reversed in 2 and 5-9
    scores = np.array([0.1, 0.9, 0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.4, 0.6])

    by_length = evaluate(labels, scores, lengths).auc_by_length

    assert by_length == {"1": 1.0, "2": 0.0, "3_4": 1.0, "5_9": 0.0, "10plus": 1.0}
    metrics = evaluate(labels, scores, lengths).metrics("val_")
    assert metrics["val_auc_len_10plus"] == 1.0 and metrics["val_auc_len_2"] == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000).map(lambda k: k / 1000)), min_size=2, max_size=60))
def test_given_any_scores_then_calibration_error_is_within_0_1_and_auc_ignores_monotone_rescaling(
    rows: list[tuple[bool, float]],
) -> None:
    labels = np.array([label for label, _ in rows], dtype=bool)
    scores = np.array([score for _, score in rows])

    assert 0.0 <= expected_calibration_error(labels, scores) <= 1.0
    first, rescaled = auc(labels, scores), auc(labels, scores**3)
    assert (math.isnan(first) and math.isnan(rescaled)) or math.isclose(first, rescaled, abs_tol=1e-12)


def test_given_two_models_scores_then_roc_and_calibration_plots_are_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = {"LSTM": np.clip(labels * 0.4 + rng.random(300) * 0.6, 0, 1), "GBM": rng.random(300)}

    paths = write_plots(labels, scores, tmp_path / "plots")

    assert [p.name for p in paths] == ["roc.png", "calibration.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)
