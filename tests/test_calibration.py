"""Calibration: a strictly increasing map from logits to probabilities (ranking unchanged),
fitted by log loss, chosen by held-out calibration error, saved with the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clickstream.models.calibration import UNCALIBRATED, Calibration, fit_calibration, logit
from clickstream.models.evaluation import auc, choose_calibration, expected_calibration_error


def _sessions(n: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): labels drawn from sigmoid(z), scores sigmoid(z + shift): too high for shift > 0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-3.0, 1.2, n)
    labels = rng.random(n) < 1 / (1 + np.exp(-z))
    return labels, (1 / (1 + np.exp(-(z + shift)))).astype(np.float32)


def test_given_scores_that_run_high_then_the_chosen_calibration_brings_the_mean_to_the_buy_rate_and_auc_stays() -> None:
    labels, scores = _sessions(20_000, shift=0.6)

    choice = choose_calibration(labels, scores)
    calibrated = choice.calibration.probability(torch.from_numpy(logit(scores))).numpy()

    assert choice.calibration.method == "platt" and choice.calibration.intercept < 0
    assert scores.mean() > 1.3 * labels.mean()
    assert calibrated.mean() == pytest.approx(labels.mean(), rel=1e-3)  # log loss optimum: mean = rate
    assert choice.ece < expected_calibration_error(labels, scores) / 3
    assert choice.ece == choice.heldout_ece["platt"] == min(choice.heldout_ece.values())
    assert auc(labels, calibrated) == pytest.approx(auc(labels, scores), abs=1e-9)


def test_given_calibrated_scores_then_the_fitted_map_stays_close_to_the_identity() -> None:
    labels, scores = _sessions(50_000, shift=0.0, seed=1)

    fitted = fit_calibration(labels.astype(float), logit(scores), "platt")

    assert fitted.slope == pytest.approx(1.0, abs=0.05) and fitted.intercept == pytest.approx(0.0, abs=0.1)


def test_given_temperature_then_only_the_slope_is_fitted() -> None:
    labels, scores = _sessions(5_000, shift=0.0, seed=2)

    fitted = fit_calibration(labels.astype(float), 2.0 * logit(scores), "temperature")

    assert fitted.intercept == 0.0 and fitted.slope == pytest.approx(0.5, abs=0.1)


def test_given_scores_under_confident_at_the_high_end_only_then_beta_is_chosen_and_recovers_the_map() -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(-3.0, 1.2, 60_000)  # the model's logits
    log_p, log_rest = -np.logaddexp(0.0, -raw), np.logaddexp(0.0, raw)  # ln p, -ln(1 - p)
    truth = 1 / (1 + np.exp(-(0.9 * log_p + 2.5 * log_rest - 0.2)))  # a beta map: no Platt map is it
    labels = rng.random(raw.size) < truth
    scores = (1 / (1 + np.exp(-raw))).astype(np.float32)

    choice = choose_calibration(labels, scores)

    assert choice.calibration.method == "beta"
    assert choice.heldout_ece["beta"] < choice.heldout_ece["platt"]
    assert choice.calibration.slope == pytest.approx(0.9, abs=0.15)
    assert choice.calibration.slope_rest == pytest.approx(2.5, abs=0.5)
    calibrated = choice.calibration.probability(torch.from_numpy(logit(scores))).numpy()
    assert auc(labels, calibrated) == pytest.approx(auc(labels, scores), abs=1e-6)


@given(
    method=st.sampled_from(["platt", "beta"]),
    slope=st.floats(1e-3, 1e3),
    slope_rest=st.floats(1e-3, 1e3),
    intercept=st.floats(-20, 20),
    logits=st.lists(st.floats(-30, 30), min_size=2, max_size=50),
)
def test_given_any_calibration_then_probabilities_never_reverse_the_order_of_logits(
    method: str, slope: float, slope_rest: float, intercept: float, logits: list[float]
) -> None:
    ordered = torch.tensor(sorted(logits), dtype=torch.float32)

    probabilities = Calibration(method, slope, intercept, slope_rest).probability(ordered)

    assert (probabilities[1:] >= probabilities[:-1]).all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_given_no_calibration_then_probabilities_are_exactly_the_sigmoid() -> None:
    logits = torch.linspace(-12, 12, 1001)

    assert torch.equal(UNCALIBRATED.probability(logits), torch.sigmoid(logits))


def test_given_a_saved_calibration_then_it_loads_equal_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    for calibration in (Calibration("platt", 0.8, -0.4), Calibration("beta", 0.9, -0.2, 2.5)):
        assert Calibration.load(calibration.save(tmp_path / "calibration.json")) == calibration
    (tmp_path / "before_beta.json").write_text('{"method": "platt", "slope": 0.8, "intercept": -0.4}')
    assert Calibration.load(tmp_path / "before_beta.json") == Calibration("platt", 0.8, -0.4)
    for bad in (Calibration("platt", -1.0, 0.0), Calibration("beta", 1.0, 0.0, 0.0)):
        with pytest.raises(ValueError, match="no valid calibration"):
            Calibration.load(bad.save(tmp_path / "bad.json"))
