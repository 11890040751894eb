# Stepgrid: the Discord bot and its GPU worker in one container.
#   docker build -t stepgrid .
#   docker run --gpus all --env-file .env -v stepgrid-models:/models -v stepgrid-data:/data stepgrid
#
# A slim Python image, not nvidia/cuda: torch's CUDA 12.8 wheels bring the CUDA runtime, cuBLAS,
# cuDNN and NCCL as nvidia-* wheels, and the driver (libcuda) comes from the host through the NVIDIA
# container toolkit (--gpus). A CUDA base image would only add a second copy of those libraries.
# Python 3.11: what CI tests (.ci/run).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/stepgrid \
    PATH=/opt/stepgrid/bin:$PATH

# Fonts for text on images in the prompt's own script (Latin, CJK, colour emoji, other scripts), and
# FriBidi, which Pillow's bundled raqm loads to shape Arabic and order right-to-left text.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji fonts-dejavu-core libfribidi0 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 stepgrid \
    && useradd --system --uid 10001 --gid stepgrid --home-dir /home/stepgrid --create-home stepgrid \
    && mkdir -p /models /data \
    && chown 10001:10001 /models /data

# The dependencies, from the lock file alone, before any source: a code change reuses this layer
# and never downloads torch again. torch is the release CI tests, in its CUDA 12.8 build, whose
# nvidia-* wheels torch itself pins exactly (the lock leaves them out: see .ci/lock).
# The ledger is SQLite; `--build-arg POSTGRES=1` adds the PostgreSQL driver (docs/scaling.md), which
# stays out of the default image: psycopg is LGPL-3.0, every other dependency is permissive.
WORKDIR /app
ARG POSTGRES=0
COPY requirements.lock requirements-postgres.lock ./
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0 \
    && pip install --no-deps -r requirements.lock \
    && if [ "$POSTGRES" = 1 ]; then pip install --no-deps -r requirements-postgres.lock; fi \
    && pip check

COPY pyproject.toml README.md ./
COPY bot ./bot
COPY inference ./inference
COPY migrations ./migrations
# The project alone, built with the locked setuptools: this layer downloads nothing.
RUN pip install --no-deps --no-build-isolation .

USER 10001:10001
# Model weights (Hugging Face cache) and Inductor's compile cache survive restarts on /models;
# the SQLite database lives on /data. The HTTP endpoint (health, metrics, status page) listens on
# the container's loopback only: set STEPGRID_HTTP_BIND=0.0.0.0 and publish 8080 to scrape /metrics.
ENV STEPGRID_MODEL_CACHE_DIR=/models \
    HF_HOME=/models/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/models/inductor \
    STEPGRID_DATABASE_PATH=/data/stepgrid.sqlite3 \
    STEPGRID_HTTP_PORT=8080
VOLUME ["/models", "/data"]

# No curl in a slim image: bot/ops/healthcheck.py (standard library) asks /healthz where the bot listens,
# STEPGRID_HTTP_PORT and STEPGRID_HTTP_BIND as the container runs (an --env-file may change them), and
# prints one line `docker inspect` shows. With the port set empty (endpoint off) it fails saying so.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.ops.healthcheck"]

CMD ["stepgrid", "run"]
