"""A real worker that dies or hangs on demand, to test the supervisor. Spawned like the real one."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection

from inference.protocol import WorkerConfig, WorkerFailed
from inference.requests import Request
from inference.worker import worker_main


def crashy_worker_main(conn: Connection, config: WorkerConfig) -> None:
    """worker_main, except that a prompt containing CRASH kills the process, HANG freezes it and
    OOM makes every UNet batch holding it raise CUDA's out-of-memory error."""
    import torch

    from inference.engine import lane_engine as engine

    real_add_job = engine.LaneEngine.add_job
    real_denoise = engine.LaneEngine._denoise

    def denoise(self: engine.LaneEngine, lanes: list[engine.Lane]) -> None:
        if any("OOM" in lane.job.request.prompt for lane in lanes):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        real_denoise(self, lanes)

    def add_job(self: engine.LaneEngine, job_id: str, request: Request) -> None:
        if "CRASH" in request.prompt:
            os.kill(os.getpid(), signal.SIGKILL)
        if "HANG" in request.prompt:
            threading.Event().wait()
        real_add_job(self, job_id, request)

    engine.LaneEngine.add_job = add_job  # type: ignore[method-assign]
    engine.LaneEngine._denoise = denoise  # type: ignore[method-assign]
    worker_main(conn, config)


def dying_worker_main(conn: Connection, config: WorkerConfig) -> None:
    """A worker that dies before it is ever ready, as a broken CUDA install would."""
    os._exit(3)


def telling_worker_main(conn: Connection, config: WorkerConfig) -> None:
    """A worker that loads nothing and says, as why, what it started with: STEPGRID_TEST_PROBE, its folder,
    whether SIGINT is ignored, whether torch was already imported, and its parent's pid."""
    told = {
        "probe": os.environ.get("STEPGRID_TEST_PROBE"),
        "cwd": os.getcwd(),
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        "torch_imported": "torch" in sys.modules,
        "parent": os.getppid(),
    }
    conn.send(WorkerFailed(json.dumps(told)))
