#!/usr/bin/env bash
# Run the engine benchmark on a GPU machine that has torch but not diffusers (the device tool's
# H100/H200). From the repository root, first fetch the wheels here (pip reaches PyPI):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2
#
# then run this script there with `.whl` carried. It prints every figure and writes them, with the
# card's name, to $OUT (or benchmarks/results/) as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
out_dir=${OUT:-benchmarks/results}
card=$(python3 -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# Eager first (no compile time), then with the UNet compiled for the buckets the runs use.
python3 benchmarks/bench_engine.py --device cuda --model sd15-arch --steps 30 --concurrent 16 \
    --max-batch-lanes 16 --repeats 3 --out "$out_dir/$card-sd15-arch-eager.json"
python3 benchmarks/bench_engine.py --device cuda --model sd15-arch --steps 30 --concurrent 16 \
    --max-batch-lanes 16 --repeats 3 --compile --buckets 1,8,16 --out "$out_dir/$card-sd15-arch-compiled.json"
