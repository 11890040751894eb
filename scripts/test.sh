#!/usr/bin/env bash
# Everything the tests need, from nothing, then the whole suite: what CI runs (.ci/run calls this).
#   ./scripts/test.sh             (as root, or with sudo for the Debian packages)
#   VENV=.ci-venv FRESH=1 ./scripts/test.sh     a fresh venv (CI)
# Extra arguments go to pytest: ./scripts/test.sh tests/bot -x
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

python3 --version
# The Redis tests start Debian's redis-server on a free loopback port: never a mock. The status page
# test loads the page in Debian's headless chromium. Text on images (captions, footers, film frames)
# is drawn in the prompt's own script with Debian's Noto and DejaVu fonts; the glyph tests check them.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
for font in truetype/noto/NotoSans-Regular.ttf:fonts-noto-core opentype/noto/NotoSansCJK-Regular.ttc:fonts-noto-cjk \
    truetype/noto/NotoColorEmoji.ttf:fonts-noto-color-emoji truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core; do
    [ -e "/usr/share/fonts/${font%%:*}" ] || missing+=("${font##*:}")
done
# Pillow's wheels bundle raqm, which loads FriBidi at run time to shape Arabic and order RTL text.
ldconfig -p | grep -q 'libfribidi\.so\.0' || missing+=(libfribidi0)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

[ "${FRESH:-0}" = 1 ] && rm -rf "$VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
# The CPU build of the torch the lock pins first, from PyTorch's CPU index (PyPI's own build would pull
# gigabytes of CUDA wheels; torch alone, its dependencies are in the lock), then exactly what the lock says
# (--no-deps: nothing it doesn't list), then
# the project itself.
python -m pip install --quiet --no-deps torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
python -m pip install --quiet --no-deps -r requirements-dev.lock
python -m pip install --quiet --no-deps -e .
python -m pip check

ruff check .
ruff format --check .
mypy
lint-imports
hadolint Dockerfile

# The tests, on every core (pytest-xdist; --dist loadfile keeps a module's shared fixtures in one process;
# --no-loadscope-reorder keeps tests/conftest.py's order, which starts the longest modules first).
pytest -q -n auto --dist loadfile --no-loadscope-reorder "$@"
