"""Fakes shared by the bot's tests: a scripted JobQueue, a recording Discord interaction, a clock.

A scripted `JobQueue` subclass stands in for the GPU worker and a recording interaction for
Discord; the end-to-end tests against the fake Discord server cover the real client.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import discord
import sqlalchemy as sa
from PIL import Image

from bot.config import Settings
from bot.jobs.policy import DatabasePolicy, SettingsPolicy
from bot.jobs.service import JobService
from bot.limits.server import EffectiveLimits
from bot.replies.buttons import JobButton
from bot.storage.database import Database
from bot.storage.job_store import DatabaseJobStore, JobRecord, MemoryJobStore
from bot.storage.models import JobRow
from inference.model_info import GUIDANCE_INPUT, ModelInfo, ModelUnavailable
from inference.protocol import TERMINAL_EVENTS, GeneratedImage, JobEvent, JobFailed, JobProgress, JobResult
from inference.queues.base import JobQueue, QueueFull
from inference.requests import CompareStepsRequest, GenerateRequest, Request

OWNER = 1001
OTHER = 2002
WAIT = 5.0  # upper bound for event-driven waits, so a bug fails fast instead of hanging


# --- models as a worker reports them -----------------------------------------------------------

SD15 = ModelInfo(
    name="sd15",
    family="sd",
    schedulers=("Euler", "Euler a", "Heun", "DPM++ 2M", "DDIM", "UniPC"),
    default_scheduler="Euler a",
    default_steps=25,
    default_guidance=7.5,
    compare_steps=(5, 10, 20, 30, 40, 50),
    native_size=512,
    size_multiple=8,
)
TURBO = ModelInfo(
    name="sdxl-turbo",
    family="sdxl",
    schedulers=("Euler", "Euler a", "DPM++ 2M", "UniPC"),
    default_scheduler="Euler a",
    default_steps=4,
    default_guidance=0.0,
    compare_steps=(1, 2, 3, 4, 6, 8),
    native_size=1024,
    size_multiple=8,
    max_steps=8,
)
FLUX = ModelInfo(
    name="flux",
    family="flux",
    schedulers=("Euler", "Heun", "DPM++ 2M", "UniPC"),
    default_scheduler="Euler",
    default_steps=28,
    default_guidance=3.5,
    compare_steps=(4, 8, 12, 20, 28, 40),
    native_size=1024,
    size_multiple=16,
    guidance_mode=GUIDANCE_INPUT,
)
# The registry that reports these three, for Settings(model=REGISTRY).
REGISTRY = (
    'models = [{name = "sd15", source = "tiny"}, {name = "sdxl-turbo", source = "tiny-sdxl", max_steps = 8}, '
    '{name = "flux", source = "tiny-flux"}]'
)


# --- fakes ------------------------------------------------------------------------------------


class ScriptedQueue(JobQueue):
    """A JobQueue whose events the test emits by hand."""

    def __init__(self, *, ready: bool = True, max_length: int = 100) -> None:
        self._ready = ready
        self.max_length = max_length
        self.requests: dict[str, Request] = {}
        self.users: dict[str, str] = {}
        self.cancelled: list[str] = []
        self.finished: set[str] = set()
        self._streams: dict[str, asyncio.Queue[JobEvent]] = {}
        self.started = False
        self.closed = False
        # What the worker reported: none until a test gives some (the queue then knows no models).
        self.loaded_models: dict[str, ModelInfo] = {}
        self.failed_models: dict[str, ModelUnavailable] = {}
        self._became_ready = asyncio.Event()
        self._submitted = asyncio.Event()

    async def start(self) -> None:
        self.started = True

    @property
    def models(self) -> dict[str, ModelInfo]:
        return dict(self.loaded_models)

    @property
    def unavailable_models(self) -> dict[str, ModelUnavailable]:
        return dict(self.failed_models)

    def load(self, *models: ModelInfo, failed: tuple[ModelUnavailable, ...] = ()) -> None:
        """Act as a worker that loaded `models` (the first is the default) and failed to load `failed`."""
        self.loaded_models = {model.name: model for model in models}
        self.failed_models = {item.name: item for item in failed}

    async def wait_ready(self) -> None:
        if not self._ready:
            await self._became_ready.wait()

    def finish_loading(self, *models: ModelInfo) -> None:
        """Act as a worker that has loaded `models` (the first is the default) and is ready."""
        self.load(*models)
        self._ready = True
        self._became_ready.set()

    async def close(self) -> None:
        self.closed = True
        for job_id in list(self._streams):
            if job_id not in self.finished:
                self.emit(JobFailed(job_id, "Stepgrid is shutting down.", retryable=True))

    @property
    def ready(self) -> bool:
        return self._ready

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        waiting = len(self._streams) - len(self.finished)
        if waiting >= self.max_length:
            raise QueueFull(waiting, self.max_length)
        assert job_id is not None
        self.requests[job_id] = request
        self.users[job_id] = user_id
        self._streams[job_id] = asyncio.Queue()
        self._submitted.set()
        return job_id

    async def wait_for_jobs(self, count: int) -> list[str]:
        """Wait until `count` jobs have been submitted; their ids in submission order."""
        async with asyncio.timeout(WAIT):
            while len(self.requests) < count:
                self._submitted.clear()
                await self._submitted.wait()
        return self.job_ids

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        stream = self._streams[job_id]
        while True:
            event = await stream.get()
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    def emit(self, event: JobEvent) -> None:
        if isinstance(event, TERMINAL_EVENTS):
            self.finished.add(event.job_id)
        self._streams[event.job_id].put_nowait(event)

    def end_stream_without_result(self, job_id: str) -> None:
        """Make the job's event iterator stop early (a broken queue)."""
        self._streams[job_id] = _ClosedStream()

    def cancel(self, job_id: str) -> bool:
        if job_id not in self._streams or job_id in self.finished:
            return False
        self.cancelled.append(job_id)
        self.emit(JobFailed.cancellation(job_id))
        return True

    def position(self, job_id: str) -> int | None:
        return None

    @property
    def job_ids(self) -> list[str]:
        return list(self.requests)


class _ClosedStream(asyncio.Queue[JobEvent]):
    async def get(self) -> JobEvent:
        raise StopAsyncIteration


@dataclass
class Call:
    """One thing the bot did to Discord, in order."""

    kind: str
    content: str | None = None
    ephemeral: bool = False
    embeds: list[discord.Embed] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    view: discord.ui.View | None = None
    at: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """The ordered log of calls, which tests can wait on."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.calls: list[Call] = []
        self.clock = clock
        self._changed = asyncio.Condition()

    async def add(self, call: Call) -> None:
        call.at = self.clock()
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Call]], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: predicate(self.calls))

    def of(self, *kinds: str) -> list[Call]:
        return [call for call in self.calls if call.kind in kinds]


def _files(files: Any) -> list[tuple[str, bytes]]:
    result = []
    for file in files or []:
        assert isinstance(file, discord.File)
        fp = cast(io.BytesIO, file.fp)
        result.append((file.filename or "", fp.getvalue()))
    return result


def http_error(status: int, code: int, message: str) -> discord.HTTPException:
    response = SimpleNamespace(status=status, reason=message)
    error_class = discord.NotFound if status == 404 else discord.HTTPException
    return error_class(cast(Any, response), {"code": code, "message": message})


class FakeResponse:
    def __init__(self, recorder: Recorder, message_id: int) -> None:
        self._recorder = recorder
        self._done = False
        self.expired = False  # the 3 s to answer passed: defer fails with Unknown interaction
        self.message_id = message_id

    def is_done(self) -> bool:
        return self._done

    async def defer(self, *, thinking: bool = False, ephemeral: bool = False) -> SimpleNamespace:
        assert not self._done, "interaction answered twice"
        if self.expired:
            raise http_error(404, 10062, "Unknown interaction")
        self._done = True
        await self._recorder.add(Call("defer", ephemeral=ephemeral, options={"thinking": thinking}))
        return SimpleNamespace(message_id=self.message_id)

    async def send_message(
        self, content: str | None = None, *, embed: discord.Embed | None = None, ephemeral: bool = False
    ) -> None:
        assert not self._done, "interaction answered twice"
        self._done = True
        await self._recorder.add(Call("send_message", content, ephemeral, [embed] if embed else []))


class FakeFollowup:
    def __init__(self, interaction: FakeInteraction) -> None:
        self._interaction = interaction

    async def send(self, content: str | None = None, *, ephemeral: bool = False) -> None:
        if self._interaction.token_dead:
            raise http_error(401, 50027, "Invalid Webhook Token")
        await self._interaction.recorder.add(Call("followup", content, ephemeral))


class FakeMessage:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def edit(self, **options: Any) -> FakeMessage:
        await self._recorder.add(_edit_call("channel_edit", options))
        return self

    async def delete(self) -> None:
        await self._recorder.add(Call("channel_delete"))


class FakeChannel:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def send(self, content: str | None = None, **options: Any) -> FakeMessage:
        options["content"] = content
        await self._recorder.add(_edit_call("channel_send", options))
        return FakeMessage(self._recorder)


def _edit_call(kind: str, options: dict[str, Any]) -> Call:
    return Call(
        kind,
        content=options.get("content"),
        embeds=list(options.get("embeds") or []),
        files=_files(options.get("attachments") or options.get("files")),
        view=options.get("view") if isinstance(options.get("view"), discord.ui.View) else None,
        options=options,
    )


class FakeClient:
    def __init__(self, recorder: Recorder, service: JobService | None = None) -> None:
        self._recorder = recorder
        self.jobs = service

    def get_partial_messageable(self, channel_id: int, *, guild_id: int | None = None) -> FakeChannel:
        return FakeChannel(self._recorder)

    def get_guild(self, guild_id: int) -> None:
        return None  # no guild in the cache: its channels are taken as not age-restricted


class FakeInteraction:
    """The parts of `discord.Interaction` the job driver uses, recording every call."""

    _ids = iter(range(10_000, 1_000_000))

    def __init__(
        self,
        recorder: Recorder,
        *,
        user_id: int = OWNER,
        filesize_limit: int = 10 * 1024 * 1024,
        permissions: discord.Permissions | None = None,
        client: FakeClient | None = None,
    ) -> None:
        self.recorder = recorder
        self.id = next(self._ids)
        self.application_id = 555
        self.token = f"token-{self.id}"
        self.user = discord.Object(user_id)
        self.guild_id = 42
        self.guild = None
        self.channel_id = 77
        self.filesize_limit = filesize_limit
        self.permissions = permissions or discord.Permissions.none()
        self.client = client or FakeClient(recorder)
        self.response = FakeResponse(recorder, message_id=self.id + 1)
        self.followup = FakeFollowup(self)
        self.command = None
        self.data: dict[str, Any] = {}
        self.type = discord.InteractionType.application_command
        self.token_dead = False

    async def edit_original_response(self, **options: Any) -> None:
        if self.token_dead:
            raise http_error(401, 50027, "Invalid Webhook Token")
        await self.recorder.add(_edit_call("edit", options))

    async def delete_original_response(self) -> None:
        if self.token_dead:
            raise http_error(401, 50027, "Invalid Webhook Token")
        await self.recorder.add(Call("delete"))

    def as_interaction(self) -> discord.Interaction:
        return cast(discord.Interaction, self)


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def png_of(width: int, height: int, colour: tuple[int, int, int] = (90, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    rng = random.Random(width * height)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def result_for(job_id: str, request: Request, *, png: Callable[[int, int], bytes] = png_of) -> JobResult:
    images = tuple(
        GeneratedImage(
            png=png(request.width, request.height),
            seed=seed,
            steps=steps,
            width=request.width,
            height=request.height,
            seconds=0.1 * steps,
        )
        for steps, seed in zip(request.lane_steps, request.lane_seeds, strict=True)
    )
    return JobResult(job_id, images, gpu_seconds=1.25, queue_seconds=0.5, is_test_model=True)


class Harness:
    """A JobService over a scripted queue, a fake clock and recording interactions."""

    def __init__(self, *, ready: bool = True, max_length: int = 100, token_lifetime: float = 840.0) -> None:
        self.clock = FakeClock()
        self.queue = ScriptedQueue(ready=ready, max_length=max_length)
        self.store = MemoryJobStore()
        self.service = self.make_service(token_lifetime=token_lifetime)

    def make_service(self, *, token_lifetime: float = 840.0) -> JobService:
        return JobService(
            self.queue,
            store=self.store,
            policy=SettingsPolicy(Settings(_env_file=None, max_steps=100)),  # type: ignore[call-arg]
            clock=self.clock,
            sleep=self.clock.sleep,
            token_lifetime=token_lifetime,
        )

    def interaction(self, **options: Any) -> FakeInteraction:
        recorder = Recorder(self.clock)
        options.setdefault("client", FakeClient(recorder, self.service))
        return FakeInteraction(recorder, **options)

    async def start(
        self, request: Request, interaction: FakeInteraction | None = None
    ) -> tuple[str, FakeInteraction, asyncio.Task[None]]:
        interaction = interaction or self.interaction()
        task = await self.service.start(interaction.as_interaction(), request, origin="imagine")
        return self.queue.job_ids[-1], interaction, task


IMAGINE = GenerateRequest(prompt="a lighthouse at dusk", steps=20, seed=1234, width=256, height=320)
COMPARE = CompareStepsRequest(prompt="a lighthouse at dusk", steps=(5, 10, 20), seed=99, width=256, height=256)


def progress(job_id: str, step: int, total: int, *, lane: int = 0, preview: bytes | None = None) -> JobProgress:
    return JobProgress(job_id, lane, step, total, step, total, preview_png=preview)


async def finished_job(harness: Harness, request: Request = IMAGINE) -> str:
    job_id, _, task = await harness.start(request)
    harness.queue.emit(result_for(job_id, request))
    await task
    return job_id


def database_harness(database: Database, *, ready: bool = True) -> Harness:
    harness = Harness(ready=ready)
    harness.store = DatabaseJobStore(database)  # type: ignore[assignment]
    harness.service = JobService(
        harness.queue,
        store=harness.store,
        policy=DatabasePolicy(database, database.settings),
        clock=harness.clock,
        sleep=harness.clock.sleep,
    )
    return harness


def record_for(request: Request, job_id: str = "0123456789abcdef0123456789abcdef") -> JobRecord:
    """A job as accepted from OWNER by /imagine in guild 42, channel 77."""
    return JobRecord(job_id, request, OWNER, 42, 77, "imagine")


def custom_ids(view: discord.ui.View) -> list[str]:
    """The custom ids of a view's job buttons, in order."""
    return [cast(JobButton, item).item.custom_id or "" for item in view.children]


class RecordingJobs:
    """The two things recovery asks of the job service, recorded instead of done."""

    def __init__(self, *, delivered: bool | None = False) -> None:
        self.resumed: list[tuple[JobRecord, float]] = []
        self.failed: list[tuple[JobRecord, str, float]] = []
        self.delivered = delivered  # what reading a job's message finds
        self.looked_at: list[str] = []

    async def already_delivered(self, client: discord.Client, record: JobRecord, *, token_age: float) -> bool | None:
        self.looked_at.append(record.job_id)
        return self.delivered

    def resume(self, client: discord.Client, record: JobRecord, *, token_age: float) -> None:
        self.resumed.append((record, token_age))

    def answer_failed(self, client: discord.Client, record: JobRecord, reason: str, *, token_age: float) -> None:
        self.failed.append((record, reason, token_age))


class FakeWallClock:
    """A wall clock (aware UTC datetimes) the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class CountingPolicy(SettingsPolicy):
    """The operator's limits, counting how often they are read."""

    reads = 0

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        self.reads += 1
        return await super().limits(guild_id)


def model_harness(*, loading: bool = False, **settings: Any) -> Harness:
    """A Harness whose worker reports SD15, TURBO and FLUX (REGISTRY), under the operator's `settings`;
    with `loading`, one whose worker is still loading them (`queue.finish_loading` reports them)."""
    harness = Harness(ready=not loading)
    if not loading:
        harness.queue.load(SD15, TURBO, FLUX)
    values: dict[str, Any] = {"model": REGISTRY, "max_steps": 100, **settings}
    harness.service.policy = SettingsPolicy(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    return harness


def harness_with_counting_policy() -> tuple[Harness, CountingPolicy]:
    harness = Harness()
    policy = CountingPolicy(harness.service.policy.settings)  # type: ignore[attr-defined]
    harness.service.policy = policy
    return harness, policy


# --- the ledger ------------------------------------------------------------------------------------

GUILD, OTHER_GUILD = 1000, 2000
ALICE, BOB = 11, 22
CHANNEL = 500


def plain_settings() -> Settings:
    """The defaults, with no .env read."""
    return Settings(_env_file=None)  # type: ignore[call-arg]


async def record(
    db: Database,
    *,
    user: int = ALICE,
    guild: int | None = GUILD,
    steps: int = 30,
    count: int = 1,
    message_id: int | None = None,
) -> JobRow:
    """An /imagine job accepted into the ledger, with the interaction a restarted bot would answer through."""
    return await db.ledger.record_job(
        GenerateRequest(prompt="a lighthouse", steps=steps, count=count),
        user_id=user,
        channel_id=CHANNEL,
        guild_id=guild,
        application_id=42,
        interaction_token="token-abc",
        message_id=message_id,
    )


async def all_jobs(db: Database) -> list[JobRow]:
    """Every row of the ledger."""
    async with db.sessions() as session:
        return list(await session.scalars(sa.select(JobRow)))
