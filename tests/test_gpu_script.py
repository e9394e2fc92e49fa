"""benchmarks/gpu.sh runs on a bare CUDA machine: no installed clickstream and no polars, MLflow,
LightGBM, Airflow or pytest. Here it runs on CPU at a tiny size, in a subprocess whose imports of
those libraries fail, and must still write its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("polars", "mlflow", "lightgbm", "airflow", "pytest")
BLOCKER = f'''
import sys


class _Blocked:
    """Imports of the libraries a GPU machine lacks fail, as they would there."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None


sys.meta_path.insert(0, _Blocked())
'''


@pytest.mark.slow
def test_given_no_frame_or_tracking_libraries_when_gpu_sh_runs_on_cpu_then_checks_and_figures_are_written(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # loaded by every python the script starts
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHON": sys.executable}
    env.update(CHECKS_TIMEOUT="1200", FIGURES_TIMEOUT="1200")  # a GPU's limits, not a shared CPU's
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out), "--device", "cpu", "--sessions", "4000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    checks = json.loads((out / "gpu_checks.json").read_text())
    assert set(checks) == {"packed_equals_padded", "resume", "scoring_matches_cpu", "bf16"}
    assert all(check["ok"] for check in checks.values())
    results = json.loads((out / "gpu_results.json").read_text())
    assert results["clickstream"] != str(REPO)  # the symlinked namespace, not an installed package
    assert results["training"]["sessions"] == 4000 and len(results["training"]["epoch_seconds"]) == 2
    for part in ("naive", "cpu", "scoring"):
        assert results[part]["sessions_per_s"] > 0, part
    assert 0.0 <= results["precision"]["bf16_auc_gap"] <= 1.0
    assert "| epoch over 4,000 sessions" in done.stdout and "GPU checks: packed_equals_padded ok" in done.stdout
