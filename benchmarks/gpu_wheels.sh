#!/usr/bin/env bash
# Downloads, on a machine with a package registry, the wheels benchmarks/gpu_check.py needs on a GPU machine
# that has none: what lit_lora needs beyond that image (torch, lightning, transformers, peft, tensorboard,
# pyarrow, pandas, xxhash are there), liger-kernel, bitsandbytes (QLoRA; 43 MB) and trl (chat_throughput.py). Versions from constraints.txt; Python 3.12, x86-64.
#   bash benchmarks/gpu_wheels.sh [DIR]     # default .whl (git-ignored: echo /.whl/ >> .git/info/exclude)
# Then, there:  python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
pins=()
for name in datasets dill multiprocess jsonargparse docstring_parser typeshed_client bitsandbytes; do
  pin=$(grep -i "^${name}==" constraints.txt || true)
  pins+=("${pin:-$name}")
done
pins+=("liger-kernel==0.8.5")
# TRL: the recipe chat_throughput.py compares with (its other needs are in the image or above).
pin=$(grep -i "^trl==" constraints.txt || true)
pins+=("${pin:-trl==1.16.0}")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$dir" "${pins[@]}"
ls "$dir"
