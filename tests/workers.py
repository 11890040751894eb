"""Helpers for tests that run a real spawned worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from inference.queues.local import LocalJobQueue


@contextlib.asynccontextmanager
async def started_queue(queue: LocalJobQueue) -> AsyncIterator[LocalJobQueue]:
    """Start the queue's worker, wait until it is ready, and close it afterwards (also on failure)."""
    await queue.start()
    try:
        await queue.wait_ready()
        yield queue
    finally:
        await queue.close()
