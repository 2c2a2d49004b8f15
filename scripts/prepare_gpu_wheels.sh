#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index: Python 3.12, x86-64 Linux, at the versions installed
# in the current environment, of the packages its image lacks (its image has torch, lightning, transformers, peft,
# accelerate, torchmetrics, tensorboard, ...), into .whl/ (git-ignored); with a path, a copy of train_amused.py too,
# for the benchmark's reference row. Checks the folder fits the 56 MiB left for it in a 64 MiB upload.
#     bash scripts/prepare_gpu_wheels.sh [path/to/train_amused.py]
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(diffusers bitsandbytes datasets jsonargparse docstring_parser typeshed_client dill multiprocess)
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64 any)
mkdir -p .whl
rm -f .whl/*.whl
for name in "${packages[@]}"; do
  version=$(python3 -m pip show "$name" | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "error: $name is not installed here: pip install -e '.[test]' first" >&2; exit 2; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]/#/--platform=}" -d .whl "$name==$version"
done
if [ -n "${1:-}" ]; then cp "$1" .whl/train_amused.py; fi
ls -l .whl
total=$(du -cb .whl | tail -1 | cut -f1)
limit=$((56 * 1024 * 1024))
echo "total $((total / 1024 / 1024)) MiB of $((limit / 1024 / 1024)) MiB"
[ "$total" -le "$limit" ] || { echo "error: .whl/ is over the limit" >&2; exit 1; }
