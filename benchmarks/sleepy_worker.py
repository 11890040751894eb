"""A stand-in GPU worker for the distribution benchmark: each step "takes" a fixed sleep, no torch.

It speaks the real worker protocol over the real pipe, one job at a time, so that what the
benchmark measures is the queue, the agents and Redis, not a 2-core CPU's arithmetic.
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

from inference.model_info import ModelInfo
from inference.protocol import (
    CancelJob,
    GeneratedImage,
    JobFailed,
    JobProgress,
    JobResult,
    Shutdown,
    SubmitJob,
    WorkerConfig,
    WorkerReady,
)
from inference.requests import SCHEDULER_NAMES

MODEL = ModelInfo(
    name="tiny",
    family="sd",
    schedulers=tuple(SCHEDULER_NAMES),
    default_scheduler="Euler",
    default_steps=10,
    default_guidance=7.5,
    compare_steps=(2, 4),
    native_size=256,
    size_multiple=8,
    is_test_model=True,
)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(4096)  # a result about the size of a small thumbnail


def sleepy_worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Spawn target: GPU time per step from STEPGRID_BENCH_STEP_SECONDS (default 0.02)."""
    step_seconds = float(os.environ.get("STEPGRID_BENCH_STEP_SECONDS", "0.02"))
    conn.send(WorkerReady((MODEL,), "sleep", "none", 0.0))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if isinstance(message, Shutdown):
            return
        if not isinstance(message, SubmitJob):
            continue
        request = message.request
        total = sum(request.lane_steps)
        started = time.perf_counter()
        cancelled = False
        for step in range(1, total + 1):
            time.sleep(step_seconds)
            conn.send(JobProgress(message.job_id, 0, step, total, step, total))
            while conn.poll():
                if isinstance(conn.recv(), CancelJob):
                    cancelled = True
            if cancelled:
                conn.send(JobFailed.cancellation(message.job_id, steps_run=step))
                break
        if not cancelled:
            seconds = time.perf_counter() - started
            images = tuple(GeneratedImage(PNG, seed, steps, request.width, request.height, seconds)
                           for steps, seed in zip(request.lane_steps, request.lane_seeds, strict=True))  # fmt: skip
            conn.send(JobResult(message.job_id, images, seconds, is_test_model=True, model=MODEL.name))
