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
#
#   STEPGRID_BENCH=all       (default) the engine's host overhead, SD1.5 architecture eager and
#                            compiled, then the model families
#   STEPGRID_BENCH=overhead  only the host overhead (issue 13): the denoiser returns at once, 1/8/16/32
#                            lanes of Euler, DPM++ 2M Karras and Euler a at SD 1.5's 64x64 latents on
#                            the card, batched steps and per-lane steps in the same session (a minute)
#   STEPGRID_BENCH=families  only the families: SDXL 1024² and FLUX.1-schnell's architecture (random
#                            weights built on the card), engine vs plain pipeline, compare-steps seconds
#   DRY_RUN=1                the same commands on the CPU with the tiny models, small and quick
#                            (PYTHON=.venv/bin/python for a checkout's venv)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
out_dir=${OUT:-benchmarks/results}
which=${STEPGRID_BENCH:-all}
bench=("${PYTHON:-python3}" benchmarks/bench_engine.py)

if [ "${DRY_RUN:-0}" = 1 ]; then
    card=cpu-dry-run
    device=(--device cpu --dtype float32)
    sdxl=(--families tiny-sdxl --size 128 --steps 2 --compare 1,2 --repeats 1)
    flux=(--families tiny-flux --size 128 --steps 2 --compare 1,2 --repeats 1)
    overhead=(--model tiny --sizes 64 --lanes 1,8 --repeats 1 --iterations 5)
    which=${STEPGRID_BENCH:-families}
else
    card=$(python3 -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    device=(--device cuda)
    # Each model's own defaults: SDXL 30 steps, ladder 5..50, guidance 5 (CFG rows); schnell 4 steps,
    # ladder 1,2,3,4,6,8, no guidance (one row per lane).
    sdxl=(--families sdxl-arch --dtype float16 --size 1024 --repeats 2 --max-batch-lanes 8)
    flux=(--families flux-schnell-arch --dtype bfloat16 --size 1024 --repeats 2 --max-batch-lanes 8)
    overhead=(--model sd15-arch --dtype float16 --sizes 512 --repeats 3 --iterations 50)
fi

if [ "$which" = all ] || [ "$which" = overhead ]; then
    # Host overhead next to a CUDA-graph UNet call (~6.4 ms for 2 rows of SD 1.5 on an H200): targets
    # <= 100 us per lane-step and <= 1 ms per iteration at 16 lanes, <= 1 progress message per job.
    "${bench[@]}" "${device[@]}" --overhead "${overhead[@]}" --out "$out_dir/$card-overhead.json"
    "${bench[@]}" "${device[@]}" --overhead "${overhead[@]}" --per-lane-steps \
        --out "$out_dir/$card-overhead-per-lane-steps.json"
    if [ "$which" = overhead ]; then exit 0; fi
fi

if [ "$which" = all ]; then
    # Eager first (no compile time), then with the UNet compiled for the buckets the runs use.
    "${bench[@]}" "${device[@]}" --model sd15-arch --steps 30 --concurrent 16 \
        --max-batch-lanes 16 --repeats 3 --out "$out_dir/$card-sd15-arch-eager.json"
    "${bench[@]}" "${device[@]}" --model sd15-arch --steps 30 --concurrent 16 \
        --max-batch-lanes 16 --repeats 3 --compile --buckets 1,8,16 --out "$out_dir/$card-sd15-arch-compiled.json"
fi
"${bench[@]}" "${device[@]}" "${sdxl[@]}" --out "$out_dir/$card-sdxl-1024.json"
"${bench[@]}" "${device[@]}" "${flux[@]}" --out "$out_dir/$card-flux-schnell-1024.json"
