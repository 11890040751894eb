"""Helpers for tests that run a real spawned worker."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path

from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.worker import worker_main


@contextlib.asynccontextmanager
async def started_queue(queue: LocalJobQueue) -> AsyncIterator[LocalJobQueue]:
    """Start the queue's worker, wait until it is ready, and close it afterwards (also on failure)."""
    await queue.start()
    try:
        await queue.wait_ready()
        yield queue
    finally:
        await queue.close()


LOAD_GATE = "STEPGRID_TEST_LOAD_GATE"


def gated_worker_main(conn: Connection, config: WorkerConfig) -> None:
    """The real worker, which starts loading its models only once the file named by $STEPGRID_TEST_LOAD_GATE
    exists: a test sees the bot while the model is still loading for as long as it needs."""
    gate = Path(os.environ[LOAD_GATE])
    while not gate.exists():
        time.sleep(0.02)
    worker_main(conn, config)
