"""A JobQueue that answers every job at once with small images, for end-to-end tests of the bot alone.

The real worker is tested elsewhere; these tests are about what the bot does with Discord and its
ledger, so the GPU side only has to keep the protocol: started, one progress event, the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image

from bot.chat.client import Stepgrid
from bot.config import Settings
from bot.storage.database import Database
from inference.protocol import (
    TERMINAL_EVENTS,
    GeneratedImage,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    JobStarted,
)
from inference.queues.base import JobQueue
from inference.requests import Request, total_steps
from tests.fake_discord import FakeDiscord


def tiny_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (max(1, width // 8), max(1, height // 8)), (40, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


class InstantQueue(JobQueue):
    """Every job submitted gets JobStarted, one progress event and its result straight away."""

    def __init__(self, *, ready: bool = True) -> None:
        self._ready = ready
        self._streams: dict[str, asyncio.Queue[JobEvent]] = {}
        self._finished: set[str] = set()
        self.submitted: list[tuple[str, Request]] = []

    async def start(self) -> None:
        return None

    async def wait_ready(self) -> None:
        return None

    async def close(self) -> None:
        for job_id, stream in self._streams.items():
            if job_id not in self._finished:
                self._finished.add(job_id)
                stream.put_nowait(JobFailed(job_id, "Stepgrid is shutting down.", retryable=True))

    @property
    def ready(self) -> bool:
        return self._ready

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        job_id = job_id or uuid.uuid4().hex
        self.submitted.append((job_id, request))
        self._streams[job_id] = asyncio.Queue()
        self.answer(job_id, request)
        return job_id

    def answer(self, job_id: str, request: Request) -> None:
        """Emit the job's start, one progress event and its result."""
        stream = self._streams[job_id]
        steps = total_steps(request)
        stream.put_nowait(JobStarted(job_id, 1))
        stream.put_nowait(JobProgress(job_id, 0, 1, steps, 1, steps))
        width, height = request.width, request.height
        images = tuple(
            GeneratedImage(tiny_png(width, height), seed, lane_steps, width, height, 0.1)
            for lane_steps, seed in zip(request.lane_steps, request.lane_seeds, strict=True)
        )
        stream.put_nowait(JobResult(job_id, images, gpu_seconds=0.5, is_test_model=True))
        self._finished.add(job_id)

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        stream = self._streams[job_id]
        while True:
            event = await stream.get()
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    def cancel(self, job_id: str) -> bool:
        return False

    def position(self, job_id: str) -> int | None:
        return None


class LoadingQueue(InstantQueue):
    """An InstantQueue whose model is still loading: jobs wait at their place until `finish_loading()`."""

    def __init__(self) -> None:
        super().__init__(ready=False)
        self._waiting: list[tuple[str, Request]] = []
        self._loaded = asyncio.Event()

    async def wait_ready(self) -> None:
        await self._loaded.wait()

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        if self._ready:
            return super().submit(request, user_id=user_id, job_id=job_id)
        job_id = job_id or uuid.uuid4().hex
        self.submitted.append((job_id, request))
        self._streams[job_id] = asyncio.Queue()
        self._waiting.append((job_id, request))
        self._streams[job_id].put_nowait(JobQueued(job_id, len(self._waiting)))
        return job_id

    def position(self, job_id: str) -> int | None:
        places = [waiting for waiting, _ in self._waiting]
        return places.index(job_id) + 1 if job_id in places else None

    def finish_loading(self) -> None:
        self._ready = True
        self._loaded.set()
        waiting, self._waiting = self._waiting, []
        for job_id, request in waiting:
            self.answer(job_id, request)


def instant_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": "tiny", "default_steps": 8}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def instant_bot(
    fake: FakeDiscord,
    *,
    settings: Settings | None = None,
    database: Database | None = None,
    queue: JobQueue | None = None,
) -> AsyncIterator[Stepgrid]:
    """A started Stepgrid on `fake` whose jobs finish at once; closed (as on shutdown) on exit."""
    bot = Stepgrid(
        settings or instant_settings(),
        queue=queue or InstantQueue(),
        database=database,
        edit_interval=0.0,
        guild_ready_timeout=0.05,
    )
    async with bot:
        runner = asyncio.create_task(bot.start(fake.token), name="e2e-bot")
        ready = asyncio.create_task(bot.wait_until_ready())
        try:
            await asyncio.wait({runner, ready}, timeout=fake.timeout, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                if runner.done():
                    runner.result()
                raise AssertionError("the bot did not become ready")
            yield bot
        finally:
            ready.cancel()
            await bot.close()
            await runner
