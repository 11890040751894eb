"""The job driver: checks before queueing, throttled progress, results, failures, buttons.

A scripted `JobQueue` subclass stands in for the GPU worker and a recording interaction for
Discord; the end-to-end tests against the fake Discord server cover the real client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import discord
import pytest
from PIL import Image

from bot.config import Settings
from bot.db import Database
from bot.errors import InvalidOption, JobNotFound, ModelLoading, NotYourJob, QueueBusy, UserFacingError
from bot.jobs import JobService
from bot.limits import LimitExceeded
from bot.policy import DatabasePolicy, RequestDefaults, SettingsPolicy
from bot.requests import compare_steps_around, derive_request, resolve_size, resolve_step_list
from bot.store import DatabaseJobStore, JobRecord, MemoryJobStore
from bot.throttle import ThrottledEditor
from inference.protocol import (
    TERMINAL_EVENTS,
    CompareStepsRequest,
    GeneratedImage,
    GenerateRequest,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    JobStarted,
    Request,
    validate,
)
from inference.queue import JobQueue, QueueFull

OWNER = 1001
OTHER = 2002
WAIT = 5.0  # upper bound for event-driven waits, so a bug fails fast instead of hanging


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

    async def start(self) -> None:
        self.started = True

    async def wait_ready(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True
        for job_id in list(self._streams):
            if job_id not in self.finished:
                self.emit(JobFailed(job_id, "Stepgrid is shutting down.", retryable=True))

    @property
    def ready(self) -> bool:
        return self._ready

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        validate(request)
        waiting = len(self._streams) - len(self.finished)
        if waiting >= self.max_length:
            raise QueueFull(waiting, self.max_length)
        assert job_id is not None
        self.requests[job_id] = request
        self.users[job_id] = user_id
        self._streams[job_id] = asyncio.Queue()
        return job_id

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
        self.emit(JobFailed(job_id, "Cancelled.", cancelled=True))
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


def _http_error(status: int, code: int, message: str) -> discord.HTTPException:
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
            raise _http_error(404, 10062, "Unknown interaction")
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
            raise _http_error(401, 50027, "Invalid Webhook Token")
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
            raise _http_error(401, 50027, "Invalid Webhook Token")
        await self.recorder.add(_edit_call("edit", options))

    async def delete_original_response(self) -> None:
        if self.token_dead:
            raise _http_error(401, 50027, "Invalid Webhook Token")
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
        task = await self.service.start(interaction.as_interaction(), request, command="imagine")
        return self.queue.job_ids[-1], interaction, task


@pytest.fixture
def harness() -> Harness:
    return Harness()


IMAGINE = GenerateRequest(prompt="a lighthouse at dusk", steps=20, seed=1234, width=256, height=320)
COMPARE = CompareStepsRequest(prompt="a lighthouse at dusk", steps=(5, 10, 20), seed=99, width=256, height=256)


def progress(job_id: str, step: int, total: int, *, lane: int = 0, preview: bytes | None = None) -> JobProgress:
    return JobProgress(job_id, lane, step, total, step, total, preview_png=preview)


# --- ThrottledEditor --------------------------------------------------------------------------

T = TypeVar("T")


class IdleEditor(ThrottledEditor[T]):
    """A ThrottledEditor a test can wait on until everything pushed has been sent."""

    async def idle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


async def test_editor_sends_the_first_update_at_once() -> None:
    clock = FakeClock()
    sent: list[str] = []

    async def send(update: str) -> None:
        sent.append(update)

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("queued")
    await editor.idle()
    assert sent == ["queued"]
    assert clock.sleeps == []


async def test_editor_coalesces_a_burst_into_the_latest_update() -> None:
    clock = FakeClock()
    sent: list[tuple[str, float]] = []

    async def send(update: str) -> None:
        sent.append((update, clock()))

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("first")
    await editor.idle()
    for step in range(1, 11):
        editor.push(f"step {step}")
    await editor.idle()
    assert [update for update, _ in sent] == ["first", "step 10"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_keeps_edits_an_interval_apart_while_a_send_is_slow() -> None:
    clock = FakeClock()
    sent: list[tuple[str, float]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def send(update: str) -> None:
        if update == "a":
            started.set()
            await release.wait()
        sent.append((update, clock()))

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("a")
    async with asyncio.timeout(WAIT):
        await started.wait()
    editor.push("b")
    editor.push("c")
    release.set()
    await editor.idle()
    assert [update for update, _ in sent] == ["a", "c"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_finish_drops_pending_progress_and_waits_for_its_slot() -> None:
    clock = FakeClock()
    sent: list[tuple[str, float]] = []

    async def send(update: str) -> None:
        sent.append((update, clock()))

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("step 1")
    await editor.idle()
    editor.push("step 2")
    await editor.finish("result")
    assert [update for update, _ in sent] == ["step 1", "result"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_survives_a_failed_progress_edit() -> None:
    clock = FakeClock()
    sent: list[str] = []

    async def send(update: str) -> None:
        if update == "bad":
            raise _http_error(500, 0, "Internal Server Error")
        sent.append(update)

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("bad")
    await editor.idle()
    editor.push("good")
    await editor.idle()
    assert sent == ["good"]


# --- accepting a request ----------------------------------------------------------------------


async def test_an_accepted_job_is_queued_then_deferred_with_thinking(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    assert harness.queue.requests[job_id] == IMAGINE
    assert harness.queue.users[job_id] == str(OWNER)
    first = interaction.recorder.calls[0]
    assert first.kind == "defer"
    assert first.options == {"thinking": True}
    assert not first.ephemeral
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerateRequest(prompt="   "), "prompt is empty"),
        (GenerateRequest(prompt="x", steps=0), "steps must be 1 to 150; got 0"),
        (GenerateRequest(prompt="x", scheduler="Warp 9"), "Unknown scheduler"),
        (GenerateRequest(prompt="x", width=513), "multiple of 8"),
        (CompareStepsRequest(prompt="x", steps=tuple(range(1, 14))), "2 to 12"),
    ],
)
async def test_an_invalid_request_is_refused_before_anything_happens(
    harness: Harness, request_: Request, message: str
) -> None:
    interaction = harness.interaction()
    with pytest.raises(InvalidOption, match=message):
        await harness.service.start(interaction.as_interaction(), request_, command="imagine")
    assert harness.queue.requests == {}
    assert interaction.recorder.calls == []


async def test_a_request_over_the_operator_ceiling_names_the_limit(harness: Harness) -> None:
    interaction = harness.interaction()
    with pytest.raises(LimitExceeded, match="at most 100 steps; you asked for 120"):
        await harness.service.start(interaction.as_interaction(), GenerateRequest("x", steps=120), command="imagine")
    assert harness.queue.requests == {}


async def test_nothing_is_queued_while_the_model_loads() -> None:
    harness = Harness(ready=False)
    interaction = harness.interaction()
    with pytest.raises(ModelLoading):
        await harness.service.start(interaction.as_interaction(), IMAGINE, command="imagine")
    assert harness.queue.requests == {}
    assert interaction.recorder.calls == []


async def test_a_full_queue_fails_the_recorded_job_and_removes_the_thinking_message() -> None:
    harness = Harness(max_length=0)
    interaction = harness.interaction()
    with pytest.raises(QueueBusy, match="queue is full"):
        await harness.service.start(interaction.as_interaction(), IMAGINE, command="imagine")
    assert [call.kind for call in interaction.recorder.calls] == ["defer", "delete"]
    assert list(harness.store.status.values()) == ["failed"]
    assert harness.service.active_jobs == frozenset()


async def test_the_job_is_in_the_ledger_before_the_interaction_is_deferred(harness: Harness) -> None:
    interaction = harness.interaction()
    seen_at_defer: list[tuple[dict[str, str], list[str]]] = []
    defer = interaction.response.defer

    async def recording_defer(**options: Any) -> SimpleNamespace:
        seen_at_defer.append((dict(harness.store.status), list(harness.queue.requests)))
        return await defer(**options)

    interaction.response.defer = recording_defer  # type: ignore[method-assign]
    job_id, _, task = await harness.start(IMAGINE, interaction)
    assert seen_at_defer == [({job_id: "queued"}, [])]  # recorded, not yet queued
    stored = harness.store.jobs[job_id]
    assert (stored.interaction_token, stored.message_id) == (interaction.token, interaction.response.message_id)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


async def test_a_defer_that_fails_finishes_the_recorded_job_and_queues_nothing(harness: Harness) -> None:
    interaction = harness.interaction()
    interaction.response.expired = True
    with pytest.raises(discord.NotFound):
        await harness.service.start(interaction.as_interaction(), IMAGINE, command="imagine")
    assert list(harness.store.status.values()) == ["failed"]
    assert harness.queue.requests == {}
    assert harness.service.active_jobs == frozenset()


# --- following a job --------------------------------------------------------------------------


async def test_progress_goes_from_queue_position_to_steps_with_a_preview(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    recorder = interaction.recorder
    queue = harness.queue

    queue.emit(JobQueued(job_id, 3))
    await recorder.wait_for(lambda calls: any("position 3" in (c.content or "") for c in calls))
    queue.emit(JobStarted(job_id, 1))
    queue.emit(progress(job_id, 7, 20, preview=png_of(32, 40)))
    await recorder.wait_for(lambda calls: any("step 7/20" in (c.content or "") for c in calls))

    step_edit = next(c for c in recorder.of("edit") if "step 7/20" in (c.content or ""))
    assert [name for name, _ in step_edit.files] == ["preview.png"]
    assert step_edit.embeds[0].image.url == "attachment://preview.png"
    assert step_edit.view is not None
    assert [item.custom_id for item in step_edit.view.children] == [f"stepgrid:cancel:{job_id}"]  # type: ignore[attr-defined]

    queue.emit(result_for(job_id, IMAGINE))
    await task
    edits = recorder.of("edit")
    assert all(later.at - earlier.at >= 1.5 for earlier, later in itertools.pairwise(edits))


async def test_a_burst_of_progress_events_makes_few_edits(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    for step in range(1, 21):
        harness.queue.emit(progress(job_id, step, 20))
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    edits = interaction.recorder.of("edit")
    assert len(edits) <= 3
    assert edits[-1].files and edits[-1].files[0][0].endswith(".png")


async def test_the_result_has_the_image_an_embed_with_every_parameter_and_buttons(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task

    final = interaction.recorder.of("edit")[-1]
    assert [name for name, _ in final.files] == ["stepgrid-1234.png"]
    image = Image.open(io.BytesIO(final.files[0][1]))
    assert image.size == (256, 320)
    embed = final.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert embed.description == IMAGINE.prompt
    assert fields["Seed"] == "1234"
    assert fields["Steps"] == "20"
    assert fields["Scheduler"] == IMAGINE.scheduler
    assert fields["Size"] == "256×320"
    assert fields["Guidance"] == "7.5"
    assert fields["Generation"] == "2.0 s"
    assert fields["Queue wait"] == "0.5 s"
    assert "random-weight test model" in (embed.footer.text or "")
    assert final.view is not None
    ids = [item.custom_id for item in final.view.children]  # type: ignore[attr-defined]
    assert ids == [f"stepgrid:{action}:{job_id}" for action in ("reroll", "fewer", "more", "compare", "details")]
    assert harness.store.status[job_id] == "done"


async def test_a_comparison_is_one_grid_attachment(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(COMPARE)
    harness.queue.emit(result_for(job_id, COMPARE))
    await task
    final = interaction.recorder.of("edit")[-1]
    assert len(final.files) == 1
    name, data = final.files[0]
    assert name == "stepgrid-compare-99.png"
    grid = Image.open(io.BytesIO(data))
    assert grid.width >= 3 * 256
    fields = {f.name: f.value for f in final.embeds[0].fields}
    assert fields["Steps"] == "5, 10, 20"


async def test_a_result_over_the_attachment_limit_is_reencoded_to_fit(harness: Harness) -> None:
    limit = 60_000
    job_id, interaction, task = await harness.start(IMAGINE, harness.interaction(filesize_limit=limit))
    harness.queue.emit(result_for(job_id, IMAGINE, png=noise_png))
    await task
    name, data = interaction.recorder.of("edit")[-1].files[0]
    assert len(data) <= limit
    assert name.endswith((".jpg", ".webp"))


async def test_a_worker_failure_replaces_the_message_with_an_ephemeral_note(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobFailed(job_id, "The GPU ran out of memory.", retryable=True))
    await task
    kinds = [call.kind for call in interaction.recorder.calls]
    assert kinds[-2:] == ["delete", "followup"]
    note = interaction.recorder.calls[-1]
    assert note.ephemeral
    assert "The GPU ran out of memory." in (note.content or "")
    assert harness.store.status[job_id] == "failed"


async def test_an_event_stream_that_ends_early_is_answered_with_a_reference(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.end_stream_without_result(job_id)
    harness.queue.emit(JobQueued(job_id, 1))  # wake the reader; the stream then ends
    await task
    note = interaction.recorder.calls[-1]
    assert note.kind == "followup" and note.ephemeral
    assert "ref `" in (note.content or "")
    reference = (note.content or "").split("ref `")[1].split("`")[0]
    assert any(reference in record.getMessage() for record in caplog.records)
    assert harness.store.status[job_id] == "failed"
    assert job_id in harness.queue.cancelled


async def test_after_the_token_expires_the_result_goes_to_the_channel() -> None:
    harness = Harness(token_lifetime=0.0)
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    assert interaction.recorder.of("edit") == []
    posted = interaction.recorder.of("channel_send", "channel_edit")
    assert posted[-1].files and posted[-1].files[0][0] == "stepgrid-1234.png"
    assert posted[0].content is not None and posted[0].content.startswith(f"<@{OWNER}>")


async def test_a_dead_token_mid_job_moves_the_message_to_the_channel(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobQueued(job_id, 2))
    await interaction.recorder.wait_for(lambda calls: any(c.kind == "edit" for c in calls))
    interaction.token_dead = True
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    final = interaction.recorder.calls[-1]
    assert final.kind in ("channel_send", "channel_edit")
    assert final.files[0][0] == "stepgrid-1234.png"


async def test_closing_the_service_waits_for_every_job_to_be_answered(harness: Harness) -> None:
    tasks = [(await harness.start(IMAGINE))[2] for _ in range(3)]
    await harness.queue.close()
    await harness.service.close()
    assert all(task.done() for task in tasks)
    assert sorted(harness.store.status.values()) == ["failed"] * 3


# --- buttons ----------------------------------------------------------------------------------


async def finished_job(harness: Harness, request: Request = IMAGINE) -> str:
    job_id, _, task = await harness.start(request)
    harness.queue.emit(result_for(job_id, request))
    await task
    return job_id


async def test_reroll_queues_the_same_prompt_with_a_new_seed_for_the_clicker(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction(user_id=OTHER)
    await harness.service.handle_button(click.as_interaction(), "reroll", job_id)
    new_id = harness.queue.job_ids[-1]
    rerolled = harness.queue.requests[new_id]
    assert isinstance(rerolled, GenerateRequest)
    assert rerolled.prompt == IMAGINE.prompt
    assert rerolled.steps == IMAGINE.steps
    assert rerolled.seed != IMAGINE.seed
    assert harness.queue.users[new_id] == str(OTHER)
    assert click.recorder.calls[0].kind == "defer"
    stored = await harness.store.get(new_id)
    assert stored is not None and stored.parent_job_id == job_id and stored.command == "reroll"


async def test_buttons_resolve_through_the_store_after_a_restart(harness: Harness) -> None:
    job_id = await finished_job(harness)
    restarted = harness.make_service()  # same store, fresh service: nothing held in memory
    click = harness.interaction()
    await restarted.handle_button(click.as_interaction(), "compare", job_id)
    compare = harness.queue.requests[harness.queue.job_ids[-1]]
    assert isinstance(compare, CompareStepsRequest)
    assert compare.seed == IMAGINE.seed
    assert compare.steps == (5, 10, 20, 30, 40, 50)


async def test_a_button_for_an_unknown_job_says_so(harness: Harness) -> None:
    with pytest.raises(JobNotFound):
        await harness.service.handle_button(harness.interaction().as_interaction(), "reroll", "feedface")


async def test_details_is_an_ephemeral_embed_of_the_stored_parameters(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction(user_id=OTHER)
    await harness.service.handle_button(click.as_interaction(), "details", job_id)
    (reply,) = click.recorder.calls
    assert reply.kind == "send_message" and reply.ephemeral
    fields = {f.name: f.value for f in reply.embeds[0].fields}
    assert fields["Seed"] == "1234"
    assert fields["Requested by"] == f"<@{OWNER}>"


async def test_the_owner_can_cancel_a_queued_job(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    click = harness.interaction()
    await harness.service.handle_button(click.as_interaction(), "cancel", job_id)
    await task
    assert harness.queue.cancelled == [job_id]
    assert click.recorder.calls[-1].content == "Cancelled." and click.recorder.calls[-1].ephemeral
    assert interaction.recorder.calls[-1].kind == "delete"  # the owner was told already
    assert harness.store.status[job_id] == "cancelled"


async def test_another_member_cannot_cancel_a_job(harness: Harness) -> None:
    job_id, _, task = await harness.start(IMAGINE)
    with pytest.raises(NotYourJob):
        await harness.service.handle_button(harness.interaction(user_id=OTHER).as_interaction(), "cancel", job_id)
    assert harness.queue.cancelled == []
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


async def test_a_moderator_cancelling_tells_the_owner(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    moderator = harness.interaction(user_id=OTHER, permissions=discord.Permissions(manage_messages=True))
    await harness.service.handle_button(moderator.as_interaction(), "cancel", job_id)
    await task
    note = interaction.recorder.calls[-1]
    assert note.kind == "followup" and note.ephemeral
    assert note.content == "A moderator cancelled your job."


async def test_cancelling_a_finished_job_says_it_finished(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction()
    await harness.service.handle_button(click.as_interaction(), "cancel", job_id)
    assert click.recorder.calls[-1].content == "That job has already finished."


# --- deriving and resolving requests ----------------------------------------------------------


def test_fewer_and_more_move_along_the_step_ladder() -> None:
    assert derive_request(IMAGINE, "fewer") == GenerateRequest(**{**IMAGINE.__dict__, "steps": 15})
    assert derive_request(IMAGINE, "more") == GenerateRequest(**{**IMAGINE.__dict__, "steps": 25})


@pytest.mark.parametrize(("steps", "action"), [(1, "fewer"), (150, "more")])
def test_no_step_below_one_or_above_the_maximum(steps: int, action: str) -> None:
    with pytest.raises(InvalidOption, match="already"):
        derive_request(GenerateRequest("x", steps=steps), action)


def test_reroll_keeps_everything_but_the_seed() -> None:
    rerolled = derive_request(COMPARE, "reroll", rng=random.Random(5))
    assert isinstance(rerolled, CompareStepsRequest)
    assert rerolled.steps == COMPARE.steps
    assert rerolled.seed != COMPARE.seed


def test_compare_from_a_result_includes_its_own_step_count() -> None:
    assert compare_steps_around(25) == (5, 10, 20, 25, 30, 40, 50)
    assert compare_steps_around(30) == (5, 10, 20, 30, 40, 50)


def test_step_buttons_refuse_a_comparison() -> None:
    with pytest.raises(InvalidOption):
        derive_request(COMPARE, "more")


def test_size_option_defaults_and_errors() -> None:
    defaults = RequestDefaults(width=512, height=512)
    assert resolve_size(None, defaults) == (512, 512)
    assert resolve_size("768x512", defaults) == (768, 512)
    with pytest.raises(InvalidOption, match="768x512"):
        resolve_size("big", defaults)


def test_a_malformed_step_list_shows_the_expected_form() -> None:
    assert resolve_step_list(None) == (5, 10, 20, 30, 40, 50)
    with pytest.raises(InvalidOption, match="5,10,20,30"):
        resolve_step_list("5,x,10")


def test_every_refusal_is_a_user_facing_error() -> None:
    for error in (InvalidOption, QueueBusy, ModelLoading, JobNotFound, NotYourJob):
        assert issubclass(error, UserFacingError)


def test_job_records_keep_the_full_request() -> None:
    record = JobRecord("abc", IMAGINE, OWNER, 42, 77, "imagine")
    assert record.request is IMAGINE
    assert record.created_at.tzinfo is not None


# --- the database-backed store and policy -----------------------------------------------------


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    async with Database(tmp_path / "stepgrid.sqlite3", settings) as database:
        yield database


def database_harness(database: Database) -> Harness:
    harness = Harness()
    harness.store = DatabaseJobStore(database)  # type: ignore[assignment]
    harness.service = JobService(
        harness.queue,
        store=harness.store,
        policy=DatabasePolicy(database, database.settings),
        clock=harness.clock,
        sleep=harness.clock.sleep,
    )
    return harness


async def test_the_ledger_has_the_job_from_acceptance_to_its_result(database: Database) -> None:
    harness = database_harness(database)
    job_id, interaction, task = await harness.start(IMAGINE)
    row = await database.get_job(job_id)
    assert row is not None and row.status == "queued"
    assert (row.message_id, row.message_channel_id) == (interaction.response.message_id, interaction.channel_id)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    row = await database.get_job(job_id)
    assert row is not None
    assert (row.status, row.steps_run, row.gpu_seconds, row.user_id) == ("done", 20, 1.25, OWNER)


async def test_buttons_resolve_from_the_database_in_a_new_service(database: Database) -> None:
    harness = database_harness(database)
    job_id = await finished_job(harness)
    restarted = database_harness(database)
    click = restarted.interaction(user_id=OTHER)
    await restarted.service.handle_button(click.as_interaction(), "more", job_id)
    (new_id,) = restarted.queue.job_ids
    assert restarted.queue.requests[new_id] == GenerateRequest(**{**IMAGINE.__dict__, "steps": 25})


async def test_a_server_limit_refuses_before_queueing(database: Database) -> None:
    await database.set_limits(42, OWNER, max_steps=20)
    harness = database_harness(database)
    interaction = harness.interaction()
    request = GenerateRequest(**{**IMAGINE.__dict__, "steps": 30})
    with pytest.raises(UserFacingError, match=r"This server allows at most 20 steps; you asked for 30\."):
        await harness.service.start(interaction.as_interaction(), request, command="imagine")
    assert harness.queue.requests == {}
    assert interaction.recorder.calls == []
    assert (await harness.service.defaults(42)).steps == 20


class FailingFinishStore(MemoryJobStore):
    """A store whose ledger write for a finished job fails (a full disk, a locked file)."""

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        raise OSError("disk full")


async def test_a_ledger_error_after_delivery_keeps_the_result(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness()
    harness.store = FailingFinishStore()
    harness.service = harness.make_service()
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    final = interaction.recorder.calls[-1]
    assert final.kind == "edit" and final.files[0][0] == "stepgrid-1234.png"
    assert interaction.recorder.of("delete", "followup") == []
    assert any("could not record its result" in record.getMessage() for record in caplog.records)


async def test_the_queues_own_retries_count_one_attempt(database: Database) -> None:
    harness = database_harness(database)
    job_id, _, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(JobStarted(job_id, 2))  # the worker crashed; the queue ran the job again
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    row = await database.get_job(job_id)
    assert row is not None and (row.status, row.attempts) == ("done", 1)


async def test_a_planned_shutdown_leaves_waiting_jobs_queued_and_says_so(database: Database) -> None:
    harness = database_harness(database)
    running_id, _, running_task = await harness.start(IMAGINE)
    queued_id, queued_interaction, queued_task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(running_id, 1))
    await queued_interaction.recorder.wait_for(lambda calls: any(c.kind == "edit" for c in calls))

    harness.service.begin_shutdown(keep_queued=True)
    await harness.queue.close()
    await harness.service.close()

    assert running_task.done() and queued_task.done()
    running, queued = await database.get_job(running_id), await database.get_job(queued_id)
    assert running is not None and running.status == "failed"
    assert queued is not None and (queued.status, queued.finished_at) == ("queued", None)
    note = queued_interaction.recorder.calls[-1]
    assert note.kind == "edit" and "restarting" in (note.content or "") and note.view is None
    assert queued_interaction.recorder.of("delete", "followup") == []


@pytest.mark.parametrize(
    ("request_", "failure", "text"),
    [
        (
            IMAGINE,
            JobFailed("j", "The GPU ran out of memory; try a smaller size or fewer images.", retryable=True),
            "Your image could not be made. The GPU ran out of memory; try a smaller size or fewer images.",
        ),
        (
            COMPARE,
            JobFailed("j", "The GPU worker stopped.", retryable=True),
            "Your comparison grid could not be made. The GPU worker stopped. Try again in a moment.",
        ),
        (
            GenerateRequest("x", count=2),
            JobFailed("j", "The model could not load."),
            "Your images could not be made. The model could not load.",
        ),
    ],
    ids=["out-of-memory", "grid", "several-images"],
)
async def test_a_failure_note_names_what_was_asked_and_gives_one_piece_of_advice(
    harness: Harness, request_: Request, failure: JobFailed, text: str
) -> None:
    job_id, interaction, task = await harness.start(request_)
    harness.queue.emit(dataclasses.replace(failure, job_id=job_id))
    await task
    assert interaction.recorder.calls[-1].content == text
