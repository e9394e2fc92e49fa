"""Post-hoc calibration of the LSTM's scores: a strictly increasing map from logits to probabilities.

Every slope is kept strictly positive, so the map is strictly increasing: every ranking
metric (AUC, PR-AUC, AUC by length) is what it was without calibration; only the
probabilities move. Four methods, fitted by log loss on labelled sessions:

- ``none``: the raw sigmoid of the logit;
- ``temperature``: sigmoid(slope * logit) (over- or under-confidence);
- ``platt``: sigmoid(slope * logit + intercept) (also a shifted base rate, e.g. scores that run high);
- ``beta``: sigmoid(slope * ln p - slope_rest * ln(1 - p) + intercept), p the raw probability (beta
  calibration, Kull et al. 2017): the low and the high scores get slopes of their own, for raw scores
  that are under-confident at one end and not at the other, which no Platt map straightens.

Which method a model gets is measured on its validation sessions (models.evaluation.choose_calibration).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from scipy.special import expit, log_expit

METHODS = ("none", "temperature", "platt", "beta")  # simplest first: it wins a tie
_EPS = 1e-7  # float32 probabilities are clipped to [EPS, 1 - EPS] before their logit is taken


@dataclass(frozen=True)
class Calibration:
    """A strictly increasing map from the model's logits to probabilities."""

    method: str = "none"
    slope: float = 1.0
    intercept: float = 0.0
    slope_rest: float = 1.0  # beta only: the weight of -ln(1 - p)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated probabilities, in the logits' dtype; `none` is exactly sigmoid(logits)."""
        if self.method == "beta":  # ln p = logsigmoid(x), -ln(1 - p) = softplus(x)
            z = self.slope * F.logsigmoid(logits) + self.slope_rest * F.softplus(logits)
            return torch.sigmoid(z + self.intercept)
        return torch.sigmoid(logits * self.slope + self.intercept)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """The calibration `save` wrote; ValueError for an unknown method or a slope that is not > 0."""
        fields = json.loads(path.read_text())
        rest = float(fields.get("slope_rest", 1.0))  # absent from files saved before beta existed
        calibration = cls(str(fields["method"]), float(fields["slope"]), float(fields["intercept"]), rest)
        if calibration.method not in METHODS or not (calibration.slope > 0 and calibration.slope_rest > 0):
            raise ValueError(f"{path} holds no valid calibration: {fields}")
        return calibration


UNCALIBRATED = Calibration()


def fit_calibration(labels: np.ndarray, logits: np.ndarray, method: str) -> Calibration:
    """The `method` calibration of minimum log loss on these sessions (float64 logits, 0/1 labels)."""
    if method == "none" or labels.size == 0:
        return Calibration(method)
    if method == "beta":  # slopes of ln p and -ln(1 - p), then the intercept
        slope, slope_rest, intercept = _fit_logistic(labels, [log_expit(logits), -log_expit(-logits)], True)
        return Calibration(method, slope, intercept, slope_rest)
    slope, intercept = _fit_logistic(labels, [logits], method == "platt")
    return Calibration(method, slope, intercept)


def _fit_logistic(labels: np.ndarray, inputs: list[np.ndarray], with_intercept: bool) -> list[float]:
    """Weights of minimum log loss for sigmoid(sum of weight * input (+ intercept)), the input weights
    kept > 0 through their logs; the intercept last (0.0 without one). Starts at weights 1, intercept 0."""
    n = len(inputs)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights = np.exp(theta[:n])
        z = sum(w * x for w, x in zip(weights, inputs, strict=True)) + (theta[n] if with_intercept else 0.0)
        residual = expit(z) - labels
        gradient = [np.mean(residual * x) * w for w, x in zip(weights, inputs, strict=True)]
        gradient += [np.mean(residual)] if with_intercept else []
        return float(np.mean(np.logaddexp(0.0, z) - labels * z)), np.array(gradient)

    found = minimize(loss, np.zeros(n + with_intercept), jac=True, method="L-BFGS-B")
    return [*map(float, np.exp(found.x[:n])), float(found.x[n]) if with_intercept else 0.0]


def logit(scores: np.ndarray) -> np.ndarray:
    """float64 log-odds of probabilities (clipped to [EPS, 1 - EPS])."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)
