"""What a GPU worker must get right before it trains, checked on its own device:

- packed: the packed forward pass equals the padded reference (1e-5);
- resume: a run cut after one epoch and resumed ends where an uninterrupted one does;
- scoring: GPU scores equal CPU scores (1e-5: scoring runs in IEEE float32);
- bf16: training under bf16 autocast stays finite and its validation AUC stays near float32's.

    python -m clickstream.pipeline.orchestrate.gpu_checks [--device cuda] [--out checks.json]

Each check returns its measured value and raises AssertionError when the guarantee fails; the
test suite runs the same functions (`pytest -m gpu`), the command runs them where pytest is not
installed and exits 1 when one fails. Imports torch, numpy and scikit-learn only (no polars,
MLflow, LightGBM or Airflow), so it runs on a bare CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from clickstream.models.device import float32_precision, resolve_device
from clickstream.models.lstm import BuyIntentLSTM
from clickstream.models.predict import predict
from clickstream.models.training.fit import fit
from clickstream.pipeline.core.config import ModelConfig, TrainConfig
from clickstream.pipeline.synthetic.tensors import N_CATEGORIES, N_CONTINUOUS, N_EVENT_TYPES, synthetic_tensors

N_ITEMS = 500
SMALL = ModelConfig(item_dim=8, category_dim=4, event_type_dim=2, hidden_size=32, dropout=0.0)
QUICK = TrainConfig(epochs=2, batch_size=256, learning_rate=1e-2, patience=10, seed=3)
SCORE_TOLERANCE = 1e-5
BF16_AUC_TOLERANCE = 0.01  # on this small set; benchmarks/gpu.sh measures the gap at full scale


def _model(config: ModelConfig = SMALL, seed: int = 0) -> BuyIntentLSTM:
    torch.manual_seed(seed)
    return BuyIntentLSTM(config, N_ITEMS, N_CATEGORIES, N_EVENT_TYPES, N_CONTINUOUS)


def _data(n_train: int = 3000, n_val: int = 1000) -> tuple:
    return synthetic_tensors(n_train, seed=1, n_items=N_ITEMS), synthetic_tensors(n_val, seed=2, n_items=N_ITEMS)


def check_packed_equals_padded(device: torch.device) -> float:
    """Largest |packed - padded| logit difference on `device`, eval mode."""
    model = _model(ModelConfig(item_dim=8)).to(device).eval()
    batch = synthetic_tensors(2000, seed=5, n_items=N_ITEMS).to(device)
    with torch.inference_mode(), float32_precision(tf32=False):
        gap = float((model(batch) - model.forward_padded(batch)).abs().max())
    assert gap <= SCORE_TOLERANCE, f"packed and padded logits differ by {gap:.2e} on {device}"
    return gap


def check_resume(device: torch.device) -> float:
    """Largest weight difference between a run cut after epoch 1 and resumed, and an uninterrupted
    one, on `device` (exactly 0 on CPU; GPU kernels may sum in another order, hence 1e-4)."""
    train, val = _data()
    config = replace(QUICK, device=str(device))
    with tempfile.TemporaryDirectory(prefix="clickstream-gpu-check-") as tmp:
        whole = fit(train, val, _model(), config, checkpoint_dir=f"{tmp}/whole")
        fit(train, val, _model(), replace(config, epochs=1), checkpoint_dir=f"{tmp}/cut")
        resumed = fit(train, val, _model(seed=99), config, checkpoint_dir=f"{tmp}/cut", resume=True)
    assert resumed.resumed_epochs == 1 and [s.epoch for s in resumed.history] == [1, 2]
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    gap = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert gap <= 1e-4, f"resumed weights differ from an uninterrupted run's by {gap:.2e} on {device}"
    return gap


def check_scoring_matches_cpu(device: torch.device) -> float:
    """Largest |score on `device` - score on CPU| of the default-sized model."""
    model = _model(ModelConfig())
    tensors = synthetic_tensors(20_000, seed=6, n_items=N_ITEMS)
    gap = float(np.abs(predict(model, tensors, device=device) - predict(model, tensors, device="cpu")).max())
    assert gap <= SCORE_TOLERANCE, f"scores on {device} differ from CPU's by {gap:.2e}"
    return gap


def check_bf16(device: torch.device) -> float:
    """|validation AUC under bf16 autocast - float32's| after the same steps from the same start."""
    train, val = _data(6000, 2000)
    config = replace(QUICK, epochs=3, device=str(device))
    plain = fit(train, val, _model(), config)
    bf16 = fit(train, val, _model(), replace(config, bf16=True))
    losses = [s.train_loss for s in bf16.history]
    assert all(np.isfinite(losses)), f"bf16 training losses {losses}"
    gap = abs(bf16.best_val_auc - plain.best_val_auc)
    assert gap <= BF16_AUC_TOLERANCE, (
        f"bf16 val AUC {bf16.best_val_auc:.4f} vs float32 {plain.best_val_auc:.4f} on {device}"
    )
    return gap


CHECKS: dict[str, Callable[[torch.device], float]] = {
    "packed_equals_padded": check_packed_equals_padded,
    "resume": check_resume,
    "scoring_matches_cpu": check_scoring_matches_cpu,
    "bf16": check_bf16,
}


def run_checks(device: torch.device, out: Path | None = None) -> dict[str, dict[str, object]]:
    """Every check on `device`: {name: {"ok": bool, "value": float | None, "error": str | None}},
    also written to `out` after each check (what is done survives a timeout)."""
    results: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        try:
            results[name] = {"ok": True, "value": check(device), "error": None}
        except Exception as error:  # a failed guarantee or a broken kernel: report it, run the rest
            traceback.print_exc()
            results[name] = {"ok": False, "value": None, "error": f"{type(error).__name__}: {error}"}
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} {results[name]}", flush=True)
        if out is not None:
            out.write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a GPU worker's training and scoring guarantees.")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to exercise the checks")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 8))
    results = run_checks(resolve_device(args.device), args.out)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
