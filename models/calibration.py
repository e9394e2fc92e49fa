"""Post-hoc calibration of the LSTM's scores: probability = sigmoid(slope * logit + intercept).

The slope is kept strictly positive, so the map is strictly increasing: every ranking
metric (AUC, PR-AUC, AUC by length) is exactly what it was without calibration; only the
probabilities move. Three methods, fitted by log loss on labelled sessions:

- ``none``: slope 1, intercept 0 (the raw sigmoid of the logit);
- ``temperature``: the slope only (over- or under-confidence);
- ``platt``: slope and intercept (also a shifted base rate, e.g. scores that run high).

Which method a model gets is measured on its validation sessions (models.evaluation.choose_calibration).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit

METHODS = ("none", "temperature", "platt")  # simplest first: it wins a tie
_EPS = 1e-7  # float32 probabilities are clipped to [EPS, 1 - EPS] before their logit is taken


@dataclass(frozen=True)
class Calibration:
    """A strictly increasing map from the model's logits to probabilities."""

    method: str = "none"
    slope: float = 1.0
    intercept: float = 0.0

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """sigmoid(slope * logits + intercept), in the logits' dtype; `none` is exactly sigmoid(logits)."""
        return torch.sigmoid(logits * self.slope + self.intercept)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """The calibration `save` wrote; ValueError for an unknown method or a slope that is not > 0."""
        fields = json.loads(path.read_text())
        calibration = cls(str(fields["method"]), float(fields["slope"]), float(fields["intercept"]))
        if calibration.method not in METHODS or not calibration.slope > 0:
            raise ValueError(f"{path} holds no valid calibration: {fields}")
        return calibration


UNCALIBRATED = Calibration()


def fit_calibration(labels: np.ndarray, logits: np.ndarray, method: str) -> Calibration:
    """The `method` calibration of minimum log loss on these sessions (float64 logits, 0/1 labels)."""
    if method == "none" or labels.size == 0:
        return Calibration(method)
    with_intercept = method == "platt"

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        slope, intercept = np.exp(theta[0]), theta[1] if with_intercept else 0.0  # exp: slope > 0
        z = slope * logits + intercept
        residual = expit(z) - labels
        gradient = [np.mean(residual * logits) * slope, np.mean(residual)]
        return float(np.mean(np.logaddexp(0.0, z) - labels * z)), np.array(gradient[: theta.size])

    found = minimize(loss, np.zeros(2 if with_intercept else 1), jac=True, method="L-BFGS-B")
    return Calibration(method, float(np.exp(found.x[0])), float(found.x[1]) if with_intercept else 0.0)


def logit(scores: np.ndarray) -> np.ndarray:
    """float64 log-odds of probabilities (clipped to [EPS, 1 - EPS])."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)
