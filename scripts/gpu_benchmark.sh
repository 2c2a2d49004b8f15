#!/usr/bin/env bash
# The one GPU call: installs the wheels carried in .whl/ (made here by scripts/prepare_gpu_wheels.sh), then runs
# scripts/gpu_benchmark.py (with the copy of train_amused.py in .whl/ if there is one), writing its table to
# OUT_DIR/gpu-benchmark.md and its log beside it. From the repository root:
#     bash scripts/gpu_benchmark.sh OUT_DIR [more gpu_benchmark.py options, e.g. --dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
reference=()
if [ -f .whl/train_amused.py ]; then reference=(--reference .whl/train_amused.py); fi
python3 scripts/gpu_benchmark.py --output "$out/gpu-benchmark.md" "${reference[@]}" "${@:2}" 2>&1 | tee "$out/gpu-benchmark.log"
