"""The asyncio-facing job queue: pending jobs live here, GPU work happens in a spawned worker."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from inference.protocol import JobEvent, Request


class QueueFull(Exception):
    """The queue is at its maximum length; nothing was queued."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"The queue is full ({waiting} of {limit} jobs waiting); try again in a minute.")
        self.waiting = waiting
        self.limit = limit


class JobQueue(abc.ABC):
    """Submit requests, follow their events, cancel them."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the worker(s); returns at once, `wait_ready` waits for the model."""

    @abc.abstractmethod
    async def wait_ready(self) -> None:
        """Wait until a worker has loaded and warmed up its pipeline (raises if it can't)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the workers; jobs still pending are answered as failed."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True once a worker has reported ready."""

    @abc.abstractmethod
    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        """Validate and queue a request; returns its job id. Raises InvalidRequest or QueueFull."""

    @abc.abstractmethod
    def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """Events of one job, ending with its JobResult or JobFailed."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it is unknown or already finished."""

    @abc.abstractmethod
    def position(self, job_id: str) -> int | None:
        """1-based place among waiting jobs, or None when running or unknown."""
