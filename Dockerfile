# Stepgrid: the Discord bot and its GPU worker in one container.
#   docker build -t stepgrid .
#   docker run --gpus all --env-file .env -v stepgrid-models:/models -v stepgrid-data:/data stepgrid
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/stepgrid \
    PATH=/opt/stepgrid/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 stepgrid \
    && useradd --system --uid 10001 --gid stepgrid --home-dir /home/stepgrid --create-home stepgrid \
    && mkdir -p /models /data \
    && chown 10001:10001 /models /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY inference ./inference
COPY migrations ./migrations
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --index-url https://download.pytorch.org/whl/cu128 "torch>=2.7,<3" \
    && pip install .

USER 10001:10001
# Model weights (Hugging Face cache) and Inductor's compile cache survive restarts on /models;
# the SQLite database lives on /data.
ENV STEPGRID_MODEL_CACHE_DIR=/models \
    HF_HOME=/models/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/models/inductor \
    STEPGRID_DATABASE_PATH=/data/stepgrid.sqlite3
VOLUME ["/models", "/data"]

CMD ["stepgrid", "run"]
