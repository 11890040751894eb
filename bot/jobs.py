"""Drive one job from an interaction to its answer; shared by the commands and the buttons.

`JobService.start` checks a request, queues it and defers the interaction; a task per job then
follows the queue's events, edits one message (queue position, then "step k/N" with a preview,
at most once per `edit_interval`) and ends it with the result or a short failure note. A job
accepted is a job answered: every path out of the driver leaves the user a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import discord

from bot.config import Settings
from bot.errors import (
    InvalidOption,
    JobNotFound,
    ModelLoading,
    ModelUnavailable,
    NotYourJob,
    QueueBusy,
    UserFacingError,
    new_reference,
    send_ephemeral,
)
from bot.limits import EffectiveLimits, check_request
from bot.models import params_to_request
from bot.views import (
    MessageUpdate,
    details_embed,
    encode_result_files,
    progress_message,
    result_message,
    step_down,
    step_up,
)
from inference.protocol import (
    DEFAULT_COMPARE_STEPS,
    MAX_COMPARE_CELLS,
    MAX_SEED,
    CompareStepsRequest,
    GenerateRequest,
    InvalidRequest,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    JobStarted,
    Request,
    parse_size,
    parse_step_list,
    total_steps,
    validate,
)
from inference.queue import JobQueue, QueueFull, WorkerUnavailable

if TYPE_CHECKING:
    from bot.db import Database

log = logging.getLogger(__name__)

EDIT_INTERVAL = 1.5
# Interaction tokens live 15 minutes; stop using ours a little before that so an upload in
# flight doesn't die with it.
TOKEN_LIFETIME = 14 * 60.0
# Webhook errors that mean the interaction token is dead.
_DEAD_TOKEN_CODES = {10015, 50027, 10062}

RESTART_NOTE = "Stepgrid is restarting. Your job keeps its place in the queue and runs once it is back."

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


# --- stored jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """A job as accepted: who asked where, and the full request (what buttons resolve)."""

    job_id: str
    request: Request
    user_id: int
    guild_id: int | None
    channel_id: int | None
    command: str  # "imagine", "compare-steps", or the button action that started it
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parent_job_id: str | None = None
    # How to answer after a restart: the interaction's webhook and the message its defer created.
    application_id: int | None = None
    interaction_token: str | None = None
    message_id: int | None = None


class JobStore(Protocol):
    """Where jobs are recorded; the in-memory one now, the database later."""

    async def record(self, job: JobRecord) -> None:
        """Store a newly accepted job (status queued)."""

    async def get_params(self, job_id: str) -> JobRecord | None:
        """The stored job, or None if unknown."""

    async def set_message(self, job_id: str, message_id: int) -> None:
        """Remember the message (the deferred interaction response) that shows the job."""

    async def mark_running(self, job_id: str) -> None:
        """The worker started the job (called once per bot run, not for the queue's retries)."""

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        """The job ended with a result, a failure or a cancellation."""


class MemoryJobStore:
    """A JobStore in a dict: buttons work until the process exits."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.status: dict[str, str] = {}

    async def record(self, job: JobRecord) -> None:
        self.jobs[job.job_id] = job
        self.status[job.job_id] = "queued"

    async def get_params(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def set_message(self, job_id: str, message_id: int) -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], message_id=message_id)

    async def mark_running(self, job_id: str) -> None:
        self.status[job_id] = "running"

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        if isinstance(outcome, JobResult):
            self.status[job_id] = "done"
        else:
            self.status[job_id] = "cancelled" if outcome.cancelled else "failed"


# --- limits and defaults ----------------------------------------------------------------------


@dataclass(frozen=True)
class RequestDefaults:
    """Values used for options the user left out."""

    steps: int = 30
    scheduler: str = "Euler a"
    guidance: float = 7.5
    width: int = 512
    height: int = 512


class RequestPolicy(Protocol):
    """Per-server defaults and limits; raising UserFacingError refuses a request before queueing."""

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        """Defaults for the server (or a DM when None)."""

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        """Raise a UserFacingError naming the limit if `request` is over one."""


class SettingsPolicy:
    """The operator's global defaults and ceilings from Settings (no per-server state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        return RequestDefaults(steps=self.settings.default_steps, scheduler=self.settings.default_scheduler)

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        settings = self.settings
        for steps in request.lane_steps:
            if steps > settings.max_steps:
                raise InvalidOption(f"This bot allows at most {settings.max_steps} steps; you asked for {steps}.")
        if isinstance(request, CompareStepsRequest) and len(request.steps) > settings.max_grid_cells:
            raise InvalidOption(
                f"This bot allows at most {settings.max_grid_cells} cells in a comparison; "
                f"you asked for {len(request.steps)}."
            )
        side = max(request.width, request.height)
        if side > settings.max_image_size:
            raise InvalidOption(
                f"This bot allows images up to {settings.max_image_size} pixels a side; you asked for {side}."
            )
        compute = request.width * request.height * total_steps(request)
        if compute > settings.max_compute_per_request:
            raise InvalidOption(
                "That request is too big (width × height × total steps is "
                f"{compute:,}; the limit is {settings.max_compute_per_request:,}): use fewer steps or a smaller size."
            )


# --- deriving requests for buttons ------------------------------------------------------------


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed in the range the worker accepts."""
    return (rng or random.SystemRandom()).randint(0, MAX_SEED)


def compare_steps_around(steps: int) -> tuple[int, ...]:
    """The default comparison, plus `steps` itself so the user's image has its cell."""
    cells = set(DEFAULT_COMPARE_STEPS)
    if len(cells) < MAX_COMPARE_CELLS:
        cells.add(steps)
    return tuple(sorted(cells))


def derive_request(request: Request, action: str, *, rng: random.Random | None = None) -> Request:
    """The request a result button asks for: reroll, fewer/more steps, or compare steps."""
    if action == "reroll":
        return dataclasses.replace(request, seed=random_seed(rng))
    if not isinstance(request, GenerateRequest):
        raise InvalidOption("That button works only on single images.")
    if action in ("fewer", "more"):
        steps = step_down(request.steps) if action == "fewer" else step_up(request.steps)
        if steps is None:
            raise InvalidOption(f"{request.steps} steps is already the {'least' if action == 'fewer' else 'most'}.")
        return dataclasses.replace(request, steps=steps)
    if action == "compare":
        return CompareStepsRequest(
            prompt=request.prompt,
            steps=compare_steps_around(request.steps),
            scheduler=request.scheduler,
            seed=request.seed,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            negative_prompt=request.negative_prompt,
        )
    raise ValueError(f"no request to derive for action {action!r}")


# --- throttled edits --------------------------------------------------------------------------


class ThrottledEditor(Generic[T]):
    """Send the latest of many updates, at most one send per `interval`.

    `push` never waits: it replaces whatever is pending, and a background task sends it when the
    interval allows. Progress sends that fail are logged and dropped; `finish` sends the last
    update in its own slot and lets its errors through.
    """

    def __init__(
        self,
        send: Callable[[T], Awaitable[None]],
        *,
        interval: float = EDIT_INTERVAL,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._pending: list[T] = []  # zero or one item: the latest update not sent yet
        self._last_send: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending = False

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def push(self, update: T) -> None:
        """Make `update` the next thing sent, replacing an older pending one."""
        self._pending[:] = [update]
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())

    async def idle(self) -> None:
        """Wait until everything pushed so far has been sent."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Drop the pending update; wait for a send in flight to end."""
        self._pending.clear()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if self._sending:
            await task
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def finish(self, update: T) -> None:
        """Drop pending progress and send `update` as the last edit, in its own slot."""
        await self.stop()
        await self._wait_for_slot()
        try:
            await self._send(update)
        finally:
            self._last_send = self._clock()

    async def _wait_for_slot(self) -> None:
        if self._last_send is None:
            return
        delay = self._last_send + self._interval - self._clock()
        if delay > 0:
            await self._sleep(delay)

    async def _flush_loop(self) -> None:
        while self._pending:
            await self._wait_for_slot()
            if not self._pending:
                return
            update = self._pending.pop()
            self._sending = True
            try:
                await self._send(update)
            except Exception:
                log.warning("a progress edit failed; the next one will try again", exc_info=True)
            finally:
                self._sending = False
                self._last_send = self._clock()


# --- where the job's message lives ------------------------------------------------------------


class _JobMessage:
    """The job's one message: the interaction's response until its token dies, then the channel.

    Subclasses say how to reach the interaction's response (a live interaction, or the webhook of
    one stored before a restart); the fallback to the channel is shared.
    """

    def __init__(
        self, client: discord.Client, *, owner_id: int, channel_id: int | None, guild_id: int | None,
        deadline: float, clock: Clock,
    ) -> None:  # fmt: skip
        self._client = client
        self._owner_id = owner_id
        self._channel_id = channel_id
        self._guild_id = guild_id
        self._deadline = deadline
        self._clock = clock
        self._token_dead = False
        self._channel_message: discord.Message | None = None

    @property
    def on_channel(self) -> bool:
        """True once messages go to the channel instead of the interaction webhook."""
        return self._token_dead or self._clock() >= self._deadline

    @property
    def attachment_limit(self) -> int:
        """The largest attachment this target accepts, in bytes."""
        limit = self._interaction_limit()
        guild = self._guild()
        return min(limit, guild.filesize_limit) if guild is not None and self.on_channel else limit

    def _interaction_limit(self) -> int:
        return discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    def _guild(self) -> discord.Guild | None:
        return self._client.get_guild(self._guild_id) if self._guild_id is not None else None

    async def _edit_original(self, update: MessageUpdate) -> None:
        raise NotImplementedError

    async def _delete_original(self) -> None:
        raise NotImplementedError

    async def _send_ephemeral(self, text: str) -> None:
        raise NotImplementedError

    async def show(self, update: MessageUpdate) -> None:
        """Make the job's message look like `update`."""
        if not self.on_channel:
            try:
                await self._edit_original(update)
                return
            except discord.HTTPException as error:
                if error.code not in _DEAD_TOKEN_CODES:
                    raise
                log.info("the interaction token of %r is dead; posting to the channel", self)
                self._token_dead = True
        await self._show_in_channel(update)

    async def fail(self, text: str | None) -> None:
        """Remove the job's message; tell its owner `text` (when given) in a message only they see."""
        if not self.on_channel:
            with contextlib.suppress(discord.HTTPException):
                await self._delete_original()
            if text is None:
                return
            try:
                await self._send_ephemeral(text)
                return
            except discord.HTTPException as error:
                if error.code not in _DEAD_TOKEN_CODES:
                    raise
                self._token_dead = True
        if self._channel_message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self._channel_message.delete()
            self._channel_message = None
        if text is not None:
            await self._channel().send(f"<@{self._owner_id}> {text}", allowed_mentions=self._mentions())

    async def _show_in_channel(self, update: MessageUpdate) -> None:
        content = f"<@{self._owner_id}> {update.content or ''}".rstrip()
        files = [file.to_file() for file in update.files]
        if self._channel_message is None:
            self._channel_message = await self._channel().send(
                content=content,
                embeds=list(update.embeds),
                files=files,
                view=update.view or discord.utils.MISSING,
                allowed_mentions=self._mentions(),
            )
        else:
            self._channel_message = await self._channel_message.edit(
                content=content, embeds=list(update.embeds), attachments=files, view=update.view
            )

    def _channel(self) -> discord.PartialMessageable:
        if self._channel_id is None:
            raise RuntimeError("the job has no channel to post in")
        return self._client.get_partial_messageable(self._channel_id, guild_id=self._guild_id)

    def _mentions(self) -> discord.AllowedMentions:
        return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(self._owner_id)])


class ReplyTarget(_JobMessage):
    """The message of a job started by an interaction this process received."""

    def __init__(self, interaction: discord.Interaction, *, owner_id: int, deadline: float, clock: Clock) -> None:
        super().__init__(
            interaction.client, owner_id=owner_id, channel_id=interaction.channel_id,
            guild_id=interaction.guild_id, deadline=deadline, clock=clock,
        )  # fmt: skip
        self._interaction = interaction

    def __repr__(self) -> str:
        return f"<interaction {self._interaction.id}>"

    def _interaction_limit(self) -> int:
        return self._interaction.filesize_limit

    def _guild(self) -> discord.Guild | None:
        return self._interaction.guild

    async def _edit_original(self, update: MessageUpdate) -> None:
        await self._interaction.edit_original_response(
            content=update.content,
            embeds=list(update.embeds),
            attachments=[file.to_file() for file in update.files],
            view=update.view,
        )

    async def _delete_original(self) -> None:
        await self._interaction.delete_original_response()

    async def _send_ephemeral(self, text: str) -> None:
        await self._interaction.followup.send(text, ephemeral=True)


class StoredReplyTarget(_JobMessage):
    """The message of a job accepted before a restart, reached through the stored interaction webhook.

    Without a stored token and message id (or once the token is too old) it posts to the channel.
    """

    def __init__(
        self, client: discord.Client, record: JobRecord, *, deadline: float, clock: Clock,
    ) -> None:  # fmt: skip
        usable = record.application_id is not None and record.interaction_token and record.message_id is not None
        super().__init__(
            client, owner_id=record.user_id, channel_id=record.channel_id, guild_id=record.guild_id,
            deadline=deadline if usable else float("-inf"), clock=clock,
        )  # fmt: skip
        self._message_id = record.message_id or 0
        self._job_id = record.job_id
        self._webhook: discord.Webhook | None = None
        if usable:
            # What Interaction.followup builds: an application webhook bound to the client's state,
            # so that views with buttons may be attached.
            data = {"id": record.application_id, "type": 3, "token": record.interaction_token}
            self._webhook = discord.Webhook.from_state(data=data, state=client._connection)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<stored interaction of job {self._job_id}>"

    def _hook(self) -> discord.Webhook:
        if self._webhook is None:  # pragma: no cover - on_channel is True then
            raise RuntimeError("no stored interaction")
        return self._webhook

    async def _edit_original(self, update: MessageUpdate) -> None:
        await self._hook().edit_message(
            self._message_id,
            content=update.content,
            embeds=list(update.embeds),
            attachments=[file.to_file() for file in update.files],
            view=update.view,
        )

    async def _delete_original(self) -> None:
        await self._hook().delete_message(self._message_id)

    async def _send_ephemeral(self, text: str) -> None:
        await self._hook().send(text, ephemeral=True)


# --- one job ----------------------------------------------------------------------------------


@dataclass
class ProgressState:
    """What the user is shown while a job waits or runs."""

    position: int | None = None
    started: bool = False
    attempt: int = 1
    lane_steps: dict[int, int] = field(default_factory=dict)
    job_step: int = 0
    job_total: int = 0
    preview_png: bytes | None = None

    def apply(self, event: JobQueued | JobStarted | JobProgress) -> None:
        """Fold one queue event into the state."""
        if isinstance(event, JobQueued):
            self.position = event.position
        elif isinstance(event, JobStarted):
            self.started = True
            self.attempt = event.attempt
            self.lane_steps.clear()
            self.job_step = 0
        else:
            self.started = True
            self.lane_steps[event.lane] = event.step
            self.job_step, self.job_total = event.job_step, event.job_total
            if event.preview_png is not None:
                self.preview_png = event.preview_png


def new_job_id() -> str:
    """A job id short enough for a button's custom id."""
    return uuid.uuid4().hex


class JobService:
    """Accepts requests from interactions and drives each job to its answer."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        store: JobStore | None = None,
        policy: RequestPolicy | None = None,
        edit_interval: float = EDIT_INTERVAL,
        token_lifetime: float = TOKEN_LIFETIME,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.queue = queue
        self.store: JobStore = store if store is not None else MemoryJobStore()
        self.policy: RequestPolicy = policy if policy is not None else SettingsPolicy(Settings())
        self.edit_interval = edit_interval
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled_by: dict[str, int] = {}
        self._keep_queued = False
        self._admission_locks: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @property
    def active_jobs(self) -> frozenset[str]:
        """Ids of jobs whose driver is still running."""
        return frozenset(self._tasks)

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        """Defaults for options a user left out in this server."""
        return await self.policy.defaults(guild_id)

    async def start(
        self,
        interaction: discord.Interaction,
        request: Request,
        *,
        command: str,
        parent_job_id: str | None = None,
    ) -> asyncio.Task[None]:
        """Check and record `request`, defer the interaction, queue the job and drive it in a task.

        The ledger row exists before the interaction is deferred, so a crash at any point leaves a
        row that start-up recovery answers. Refusals found before the defer raise UserFacingError
        with nothing answered, so they can still be ephemeral; a queue that refuses after the defer
        marks the row failed, removes the "thinking…" message and raises too (the error handler
        then answers in an ephemeral follow-up).
        """
        try:
            validate(request)
        except InvalidRequest as error:
            raise InvalidOption(str(error)) from None
        if self.queue.unavailable:
            raise ModelUnavailable()
        if not self.queue.ready:
            raise ModelLoading()
        record = JobRecord(
            job_id=new_job_id(),
            request=request,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            command=command,
            parent_job_id=parent_job_id,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
        )
        job_id = record.job_id
        # One admission at a time per member: the limits count the member's jobs in the ledger, so
        # the next request is checked only once this one is recorded (else a burst slips past them).
        async with self._admission_lock(interaction.guild_id, interaction.user.id):
            await self.policy.check(request, guild_id=interaction.guild_id, user_id=interaction.user.id)
            await self.store.record(record)
        # The row exists: every way out from here finishes it or hands it to a driver.
        deadline = self._clock() + self.token_lifetime
        try:
            response = await interaction.response.defer(thinking=True)
            message_id = response.message_id if response is not None else None
            if message_id is not None:
                await self.store.set_message(job_id, message_id)
            self._submit(record)
        except UserFacingError as refusal:
            await self._quietly(self.store.mark_finished(job_id, JobFailed(job_id, str(refusal))))
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            raise
        except BaseException:
            await self._quietly(self.store.mark_finished(job_id, JobFailed(job_id, "The job could not be started.")))
            raise
        log.info("job %s accepted: %s from user %s", job_id, command, record.user_id)
        target = ReplyTarget(interaction, owner_id=record.user_id, deadline=deadline, clock=self._clock)
        return self._spawn_driver(record, target)

    def _submit(self, record: JobRecord) -> None:
        """Hand the job to the queue; its refusals become UserFacingErrors."""
        try:
            self.queue.submit(record.request, user_id=str(record.user_id), job_id=record.job_id)
        except QueueFull as error:
            raise QueueBusy(str(error)) from None
        except WorkerUnavailable:
            log.error("refused job %s: the worker cannot load its model", record.job_id)
            raise ModelUnavailable() from None
        except InvalidRequest as error:
            raise InvalidOption(str(error)) from None

    def _admission_lock(self, guild_id: int | None, user_id: int) -> asyncio.Lock:
        lock = self._admission_locks.get((guild_id, user_id))
        if lock is None:
            lock = self._admission_locks[(guild_id, user_id)] = asyncio.Lock()
        return lock

    def resume(self, client: discord.Client, record: JobRecord, *, token_age: float) -> asyncio.Task[None]:
        """Queue a job accepted before a restart again and drive it to its answer.

        The answer edits the job's original message while its interaction token (`token_age`
        seconds old) lives, else it goes to the job's channel with a mention. If the queue refuses
        the job, the user is told it failed.
        """
        target = StoredReplyTarget(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        try:
            self.queue.submit(record.request, user_id=str(record.user_id), job_id=record.job_id)
        except (QueueFull, WorkerUnavailable, InvalidRequest) as error:
            reason = "the model failed to load" if isinstance(error, WorkerUnavailable) else str(error)
            return self.answer_failed(client, record, f"it could not be queued again after a restart ({reason})",
                                      token_age=token_age)  # fmt: skip
        log.info("job %s re-queued after a restart", record.job_id)
        return self._spawn_driver(record, target)

    def answer_failed(
        self, client: discord.Client, record: JobRecord, reason: str, *, token_age: float
    ) -> asyncio.Task[None]:
        """Record a job accepted before a restart as failed and tell its owner why."""
        target = StoredReplyTarget(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        failure = JobFailed(record.job_id, reason)

        async def answer() -> None:
            await self.store.mark_finished(record.job_id, failure)
            log.info("job %s answered as failed after a restart: %s", record.job_id, reason)
            await self._quietly(target.fail(_failure_text(failure, record.request)))

        return self._track(record.job_id, asyncio.create_task(answer(), name=f"stepgrid-job-{record.job_id}"))

    def _spawn_driver(self, record: JobRecord, target: _JobMessage) -> asyncio.Task[None]:
        task = asyncio.create_task(self._drive(record, target), name=f"stepgrid-job-{record.job_id}")
        return self._track(record.job_id, task)

    def _track(self, job_id: str, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return task

    async def handle_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        """Act on a click on one of a job's buttons."""
        record = await self.store.get_params(job_id)
        if record is None:
            raise JobNotFound(job_id)
        if action == "details":
            await interaction.response.send_message(embed=details_embed(record), ephemeral=True)
        elif action == "cancel":
            await self.cancel(interaction, record)
        else:
            request = derive_request(record.request, action)
            await self.start(interaction, request, command=action, parent_job_id=job_id)

    async def cancel(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """Cancel a queued or running job for its owner or a moderator."""
        user = interaction.user
        if user.id != record.user_id and not interaction.permissions.manage_messages:
            raise NotYourJob()
        self._cancelled_by[record.job_id] = user.id
        if self.queue.cancel(record.job_id):
            log.info("job %s cancelled by user %s", record.job_id, user.id)
            await send_ephemeral(interaction, "Cancelled.")
        else:
            self._cancelled_by.pop(record.job_id, None)
            await send_ephemeral(interaction, "That job has already finished.")

    def begin_shutdown(self, *, keep_queued: bool) -> None:
        """A planned shutdown starts (call before closing the queue).

        With `keep_queued`, jobs the queue fails because it is closing, and that had not started,
        stay queued in the ledger for start-up recovery to run, and their owners are told so.
        Only for a store that outlives the process (the database).
        """
        self._keep_queued = keep_queued

    async def close(self, grace: float = 10.0) -> None:
        """Wait for the drivers to answer their jobs (close the queue first), then cancel the rest."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _drive(self, record: JobRecord, target: _JobMessage) -> None:
        job_id = record.job_id
        editor: ThrottledEditor[MessageUpdate] = ThrottledEditor(
            target.show, interval=self.edit_interval, clock=self._clock, sleep=self._sleep
        )
        state = ProgressState()
        marked_running = False
        try:
            position = self.queue.position(job_id)
            if position is not None:
                state.position = position
            editor.push(progress_message(record, state))
            async for event in self.queue.events(job_id):
                if isinstance(event, JobResult):
                    await self._finish_with_result(record, event, target, editor)
                    return
                if isinstance(event, JobFailed):
                    if self._keep_queued and not marked_running and not event.cancelled:
                        await self._leave_queued(record, state, editor)
                    else:
                        await self._finish_with_failure(record, event, target, editor)
                    return
                if isinstance(event, JobStarted) and not marked_running:
                    # Once per driver: the queue's own retries (worker crash, out of memory) start
                    # the job again, but the ledger's attempts count the bot runs that started it.
                    await self.store.mark_running(job_id)
                    marked_running = True
                state.apply(event)
                editor.push(progress_message(record, state))
            raise RuntimeError(f"the event stream of job {job_id} ended without a result")
        except asyncio.CancelledError:
            self.queue.cancel(job_id)
            await editor.stop()
            raise
        except Exception:
            reference = new_reference()
            log.exception("job %s failed in the bot (ref %s)", job_id, reference)
            self.queue.cancel(job_id)
            await editor.stop()
            await self._quietly(self.store.mark_finished(job_id, JobFailed(job_id, f"bot error (ref {reference})")))
            await self._quietly(
                target.fail(f"Something went wrong on my side (ref `{reference}`). It has been logged; try again.")
            )
        finally:
            self._cancelled_by.pop(job_id, None)

    async def _finish_with_result(
        self, record: JobRecord, result: JobResult, target: _JobMessage, editor: ThrottledEditor[MessageUpdate]
    ) -> None:
        files = await asyncio.to_thread(encode_result_files, record, result, limit=target.attachment_limit)
        await editor.finish(result_message(record, result, files))
        # Delivered: from here on a failure must not withdraw the result the user already has.
        try:
            await self.store.mark_finished(record.job_id, result)
        except Exception:
            log.exception("job %s was delivered but the ledger could not record its result", record.job_id)
            return
        log.info("job %s done: %d image(s), %.2f GPU s", record.job_id, len(result.images), result.gpu_seconds)

    async def _leave_queued(
        self, record: JobRecord, state: ProgressState, editor: ThrottledEditor[MessageUpdate]
    ) -> None:
        # The ledger row stays queued: start-up recovery runs the job again and edits this message.
        log.info("job %s stays queued in the ledger for the next start", record.job_id)
        note = dataclasses.replace(progress_message(record, state), content=RESTART_NOTE, view=None)
        await self._quietly(editor.finish(note))

    async def _finish_with_failure(
        self, record: JobRecord, failure: JobFailed, target: _JobMessage, editor: ThrottledEditor[MessageUpdate]
    ) -> None:
        await editor.stop()
        await self.store.mark_finished(record.job_id, failure)
        if failure.cancelled:
            cancelled_by = self._cancelled_by.get(record.job_id)
            # The owner who clicked Cancel was already told; anyone else hears it here.
            if cancelled_by == record.user_id:
                await target.fail(None)
            else:
                await target.fail(_failure_text(failure, record.request, cancelled_by_other=cancelled_by is not None))
        else:
            log.info("job %s failed: %s", record.job_id, failure.message)
            await target.fail(_failure_text(failure, record.request))

    @staticmethod
    async def _quietly(awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except Exception:
            log.warning("could not tell the user about a failed job", exc_info=True)


def _failure_text(failure: JobFailed, request: Request, *, cancelled_by_other: bool = False) -> str:
    """What the owner is told when their job ends without a result."""
    if failure.cancelled:
        return "A moderator cancelled your job." if cancelled_by_other else "Your job was cancelled."
    message = failure.message.strip()
    # Messages that already say what to do keep their own advice; the rest say when to retry.
    if failure.retryable and "try" not in message.lower():
        message = f"{message} Try again in a moment."
    return f"{_what_was_asked(request)} could not be made. {message}"


def _what_was_asked(request: Request) -> str:
    if isinstance(request, CompareStepsRequest):
        return "Your comparison grid"
    return "Your images" if request.count > 1 else "Your image"


def resolve_size(text: str | None, defaults: RequestDefaults) -> tuple[int, int]:
    """(width, height) from a size option like "512" or "768x512", or the defaults."""
    if text is None or not text.strip():
        return defaults.width, defaults.height
    try:
        return parse_size(text.strip())
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


def resolve_step_list(text: str | None) -> tuple[int, ...]:
    """Step counts from "5,10,20"; the default comparison when left out."""
    if text is None or not text.strip():
        return DEFAULT_COMPARE_STEPS
    try:
        return parse_step_list(text)
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


# --- backed by the database -------------------------------------------------------------------


class DatabaseJobStore:
    """A JobStore on the job ledger: buttons resolve after a restart, every job has its row."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(self, job: JobRecord) -> None:
        await self.database.record_job(
            job.request,
            user_id=job.user_id,
            channel_id=job.channel_id or 0,
            guild_id=job.guild_id,
            job_id=job.job_id,
            origin=job.command,
            parent_job_id=job.parent_job_id,
            application_id=job.application_id,
            interaction_token=job.interaction_token,
            message_id=job.message_id,
        )

    async def get_params(self, job_id: str) -> JobRecord | None:
        row = await self.database.get_job(job_id)
        if row is None:
            return None
        return JobRecord(
            job_id=row.id,
            request=params_to_request(row.command, row.params),
            user_id=row.user_id,
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            command=row.origin or row.command,
            created_at=row.created_at,
            parent_job_id=row.parent_job_id,
            application_id=row.application_id,
            interaction_token=row.interaction_token,
            message_id=row.message_id,
        )

    async def set_message(self, job_id: str, message_id: int) -> None:
        await self.database.set_message(job_id, message_id=message_id)

    async def mark_running(self, job_id: str) -> None:
        await self.database.mark_running(job_id)

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        await self.database.mark_finished(job_id, outcome)


class DatabasePolicy:
    """Each server's limits from the database, tightened to the operator's ceilings in Settings."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server (the operator's alone in DMs)."""
        server = await self.database.get_limits(guild_id) if guild_id is not None else None
        return EffectiveLimits.combine(server, self.settings)

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        limits = await self.limits(guild_id)
        return RequestDefaults(steps=limits.default_steps, scheduler=limits.default_scheduler)

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        check_request(
            request,
            await self.limits(guild_id),
            steps_used_today=await self.database.steps_used_today(guild_id, user_id),
            active_jobs=await self.database.active_jobs(guild_id, user_id),
        )
