#!/usr/bin/env bash
# The GPU figures in one run (under 8 minutes on one H200): the GPU checks, then benchmarks.gpu.
#   bash benchmarks/gpu.sh [OUT_DIR] [benchmarks.gpu flags, e.g. --device cpu --sessions 20000]
# Needs only python with torch, numpy and scikit-learn (no polars, MLflow, LightGBM, Airflow, pytest,
# and no installed clickstream): the repository's folders are mapped onto the clickstream namespace
# through a temporary folder of symlinks on PYTHONPATH. Writes OUT_DIR/gpu_checks.json and
# OUT_DIR/gpu_results.json (OUT_DIR: $OUT, else the current folder) and prints the markdown block
# for benchmarks/RESULTS.md. Exit status 1 when a check or a part failed. Time limits (seconds):
# CHECKS_TIMEOUT [150] for the checks, FIGURES_TIMEOUT [420] for the figures.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-.}}
[ $# -gt 0 ] && shift
mkdir -p "$out"
python=${PYTHON:-python3}
namespace=$(mktemp -d)
trap 'rm -rf "$namespace"' EXIT
mkdir "$namespace/clickstream"
for package in pipeline features models; do ln -s "$repo/$package" "$namespace/clickstream/$package"; done
export PYTHONPATH="$namespace:$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"

device=cuda
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --device ] && { j=$((i + 1)); device=${!j}; }; done
"$python" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "python", sys.version.split()[0])'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

status=0
timeout "${CHECKS_TIMEOUT:-150}" "$python" -m clickstream.pipeline.orchestrate.gpu_checks --device "$device" --out "$out/gpu_checks.json" || status=1
timeout "${FIGURES_TIMEOUT:-420}" "$python" -m benchmarks.gpu --checks "$out/gpu_checks.json" --out "$out/gpu_results.json" "$@" || status=1
exit $status
