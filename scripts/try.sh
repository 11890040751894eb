#!/usr/bin/env bash
# Install Stepgrid into .venv and render the example grid on the built-in test model, offline.
#   ./scripts/try.sh              CPU build of torch (set TORCH_INDEX=https://download.pytorch.org/whl/cu128 on a GPU box)
# torch goes first, from the index of the build you want: PyPI's own Linux wheel is the CUDA build (gigabytes).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
python3 -m venv .venv
# --no-deps: only torch from that index; its own dependencies come from PyPI with Stepgrid's below.
.venv/bin/pip install --quiet --no-deps torch==2.13.0 --index-url "$TORCH_INDEX"
.venv/bin/pip install --quiet -e .
.venv/bin/stepgrid compare-steps "a lighthouse on a cliff at dusk" --model tiny --seed 42 --size 256 -o grid.png
echo "Wrote grid.png. Next: run the bot (README.md) or the commands in docs/commands.md."
