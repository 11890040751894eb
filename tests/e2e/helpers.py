"""Helpers for the end-to-end tests: one real worker shared by many bot instances, and a loop heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from bot.chat.client import Stepgrid
from bot.config import Settings
from bot.storage.database import Database
from inference.model_info import ModelInfo, ModelUnavailable
from inference.protocol import TERMINAL_EVENTS, JobEvent, JobFailed, JobProgress, JobResult, JobStarted
from inference.queues.base import JobQueue, WorkerStatus
from inference.queues.local import LocalJobQueue
from inference.requests import Request
from tests.fake_discord import FakeDiscord, InteractionHandle, RecordedFile, RecordedRequest

Json = dict[str, Any]


@dataclass(frozen=True)
class Submitted:
    job_id: str | None  # None when the inner queue refused it
    user_id: str
    request: Request


class SharedQueue(JobQueue):
    """One bot's view of the module's real `LocalJobQueue`.

    `start`/`close` leave the worker running (spawning one costs seconds); `close` cancels the jobs this
    view submitted that have not finished, as closing a real queue would fail them. It records every
    submit attempt and the order in which jobs start and end, and can hold a job's event stream after its
    first progress event so that a test can act while the job is known to be mid-run.
    """

    def __init__(self, inner: LocalJobQueue) -> None:
        self.inner = inner
        self.submitted: list[Submitted] = []
        self.timeline: list[tuple[str, str]] = []  # ("started" | "result" | "failed", job id), as the bot saw them
        self._users: dict[str, str] = {}
        self._unfinished: set[str] = set()
        self._hold_next: asyncio.Event | None = None
        self._holds: dict[str, asyncio.Event] = {}
        self._submits = asyncio.Event()  # set (and replaced) at every submit

    async def start(self) -> None:
        """The worker is already running."""

    async def wait_ready(self) -> None:
        await self.inner.wait_ready()

    async def close(self) -> None:
        for job_id in list(self._unfinished):
            self.inner.cancel(job_id)
        for hold in self._holds.values():
            hold.set()

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def unavailable(self) -> str | None:
        return self.inner.unavailable

    @property
    def models(self) -> dict[str, ModelInfo]:
        return self.inner.models

    @property
    def unavailable_models(self) -> dict[str, ModelUnavailable]:
        return self.inner.unavailable_models

    def workers(self) -> list[WorkerStatus]:
        return self.inner.workers()

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        entry = len(self.submitted)
        self.submitted.append(Submitted(None, user_id, request))
        job_id = self.inner.submit(request, user_id=user_id, job_id=job_id)
        self.submitted[entry] = Submitted(job_id, user_id, request)
        self._users[job_id] = user_id
        self._unfinished.add(job_id)
        if self._hold_next is not None:
            self._holds[job_id], self._hold_next = self._hold_next, None
        self._submits.set()
        self._submits = asyncio.Event()
        return job_id

    async def wait_for_submitted(self, count: int) -> None:
        """Until `count` jobs were submitted: each one recorded in the ledger before (the interaction's
        acknowledgement comes before both)."""
        async with asyncio.timeout(60.0):
            while len([entry for entry in self.submitted if entry.job_id is not None]) < count:
                await self._submits.wait()

    def hold_next_job(self) -> asyncio.Event:
        """Hold the event stream of the next submitted job after its first progress event until the event is set."""
        self._hold_next = asyncio.Event()
        return self._hold_next

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async for event in self.inner.events(job_id):
            if isinstance(event, JobStarted):
                self.timeline.append(("started", job_id))
            elif isinstance(event, JobResult):
                self.timeline.append(("result", job_id))
            elif isinstance(event, JobFailed):
                self.timeline.append(("failed", job_id))
            if isinstance(event, TERMINAL_EVENTS):
                self._unfinished.discard(job_id)
            yield event
            hold = self._holds.get(job_id)
            if isinstance(event, JobProgress) and hold is not None:
                await hold.wait()

    def cancel(self, job_id: str) -> bool:
        return self.inner.cancel(job_id)

    def position(self, job_id: str) -> int | None:
        return self.inner.position(job_id)

    def user_of(self, job_id: str) -> str:
        return self._users[job_id]

    def job_ids(self, kind: str) -> list[str]:
        """Job ids in the order the bot saw their `kind` event ("started", "result", "failed")."""
        return [job_id for what, job_id in self.timeline if what == kind]


def e2e_settings(**overrides: Any) -> Settings:
    """Settings for a bot against the fake: no .env, the tiny model's ids, small defaults."""
    values: dict[str, Any] = {"model": "tiny", "default_steps": 8, "queue_max_length": 50}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    worker: LocalJobQueue,
    *,
    settings: Settings | None = None,
    database: Database | None = None,
    edit_interval: float = 0.2,
    queue: SharedQueue | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Stepgrid, SharedQueue]]:
    """A started Stepgrid connected to `fake`, using the shared worker (through `queue`, a SharedQueue of it,
    when given); closed (as on shutdown) on exit."""
    queue = queue if queue is not None else SharedQueue(worker)
    bot = Stepgrid(
        settings or e2e_settings(),
        queue=queue,
        database=database,
        edit_interval=edit_interval,
        guild_ready_timeout=0.05,
        **options,
    )
    async with bot:
        runner = asyncio.create_task(bot.start(fake.token), name="e2e-bot")
        ready = asyncio.create_task(bot.wait_until_ready())
        try:
            await asyncio.wait({runner, ready}, timeout=fake.timeout, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                if runner.done():
                    runner.result()  # re-raises why the bot could not start
                raise AssertionError("the bot did not become ready")
            yield bot, queue
        finally:
            ready.cancel()
            await bot.close()
            await runner


@contextlib.contextmanager
def worker_paused(worker: LocalJobQueue) -> Iterator[None]:
    """Freeze the worker process (SIGSTOP) so that the jobs it runs can't finish until the block ends."""
    pid = worker.worker_pid
    assert pid is not None, "the worker is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- reading what the bot sent -------------------------------------------------------------------


def result_files(request: RecordedRequest) -> list[RecordedFile]:
    """The result image(s) a request uploaded (progress previews excluded)."""
    return [f for f in request.files if f.filename.startswith("stepgrid-")]


def is_result(request: RecordedRequest) -> bool:
    return request.ok and bool(result_files(request))


async def wait_for_result(handle: InteractionHandle) -> RecordedRequest:
    """The successful request that delivered this interaction's result image(s)."""
    return await handle.wait_for(is_result)


async def wait_for_progress(handle: InteractionHandle, text: str) -> RecordedRequest:
    """The first successful edit of this interaction's message whose content contains `text`."""
    return await handle.wait_for(lambda r: r.is_edit and r.ok and text in (content(r) or ""))


async def ephemeral_reply(handle: InteractionHandle) -> RecordedRequest:
    """The interaction's first answer, which must be an ephemeral message (not a defer)."""
    callback = await handle.wait_for_callback()
    assert callback.ok
    assert callback.json["type"] == 4, f"expected a message, got callback type {callback.json['type']}"
    assert callback.ephemeral
    return callback


async def refusal(handle: InteractionHandle) -> str:
    """The words of a command refused at once, privately."""
    return content(await ephemeral_reply(handle)) or ""


async def refusal_after_defer(handle: InteractionHandle) -> str:
    """The words of a command refused once the ledger was read, after its defer (the member's jobs at a time,
    steps today, the same job again): the "thinking…" message removed, the refusal in a private follow-up."""
    callback = await handle.wait_for_callback()
    assert callback.ok and callback.json["type"] == 5, f"expected a defer, got callback type {callback.json['type']}"
    follow_up = await handle.wait_for(lambda r: r.is_followup and r.ok)
    assert follow_up.ephemeral
    assert any(r.method == "DELETE" and r.path.endswith("/messages/@original") for r in handle.requests)
    return content(follow_up) or ""


def content(request: RecordedRequest) -> str | None:
    value = request.data.get("content")
    return value if isinstance(value, str) else None


def embed_fields(request: RecordedRequest) -> dict[str, str]:
    """name -> value of the first embed's fields."""
    embeds = request.data.get("embeds") or []
    return {f["name"]: f["value"] for f in embeds[0].get("fields", [])} if embeds else {}


def custom_ids(message: Json | None) -> list[str]:
    """Custom ids of the buttons on a message, as the fake holds it."""
    found: list[str] = []
    pending = list((message or {}).get("components", []))
    while pending:
        component = pending.pop(0)
        if "custom_id" in component:
            found.append(component["custom_id"])
        pending.extend(component.get("components", []))
    return found


def button(message: Json | None, action: str) -> str:
    """The custom id of the job button `action` on a message."""
    ids = [cid for cid in custom_ids(message) if cid.startswith(f"stepgrid:{action}:")]
    assert ids, f"no {action} button on the message; it has {custom_ids(message)}"
    return ids[0]


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass
class Heartbeat:
    """Wakes every `interval` seconds and records the longest time between two wake-ups."""

    interval: float = 0.01
    longest: float = 0.0
    gaps: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._run(), name="e2e-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.gaps.append(now - last)
            self.longest = max(self.longest, now - last)
            last = now

    def summary(self) -> str:
        """The longest gap and the 99th percentile, in milliseconds."""
        gaps = sorted(self.gaps) or [0.0]
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        return f"longest gap {self.longest * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(self.gaps)} beats"
