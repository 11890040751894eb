"""Drive one job from an interaction to its answer; shared by the commands and the buttons.

`JobService.start` checks a request, queues it and defers the interaction; a task per job then
follows the queue's events, edits one message (queue position, then "step k/N" with a preview,
at most once per `edit_interval`) and ends it with the result or a short failure note. A job
accepted is a job answered: every path out of the driver leaves the user a message.

A command sent while the worker is still loading can't have its model's defaults yet (its native
size, steps, scheduler): the job is recorded with what the member typed, held in the bot until the
models are known, then built and checked as if it had come then, and queued in the order accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import discord

from bot.config import Settings
from bot.errors import (
    InvalidOption,
    JobNotFound,
    ModelUnavailable,
    NotYourJob,
    QueueBusy,
    Restarting,
    ServerOnly,
    UserFacingError,
    new_reference,
    send_ephemeral,
)
from bot.job_requests import (
    RequestDefaults,
    RequestOptions,
    build_request,
    checked,
    derive_from_image,
    derive_request,
    grid_cell,
    one_of_images,
    requested_loras,
)
from bot.jobs.attachments import read_attachment
from bot.jobs.learned_steps import learned_steps
from bot.jobs.policy import RequestPolicy, SettingsPolicy
from bot.limits.checks import (
    check_image_input,
    check_input_pixels,
    check_request,
    check_request_alone,
    check_sizes,
    size_ceiling,
)
from bot.limits.server import EffectiveLimits, UnknownModel, choose_model
from bot.ops.metrics import Metrics
from bot.pictures.input_image import image_dimensions, prepare_input_image
from bot.pictures.remembered_rows import remembered_rows, settle_step
from bot.replies.buttons import IMAGE_ACTIONS
from bot.replies.messages import (
    MessageUpdate,
    ProgressState,
    details_embed,
    encode_result_files,
    failure_text,
    progress_message,
    result_attachment,
    result_message,
)
from bot.replies.reply import InteractionMessage, JobMessage, StoredInteractionMessage
from bot.replies.screening import Screening
from bot.replies.throttle import EDIT_INTERVAL, MonotonicClock, Sleep, ThrottledEditor
from bot.storage.job_store import JobRecord, JobStore, MemoryJobStore
from bot.storage.models import command_of
from bot.storage.sweet_spots import SettledRow
from inference.logs import job_context
from inference.model_info import ModelInfo
from inference.protocol import JobFailed, JobProgress, JobResult, JobStarted
from inference.queues.base import JobQueue, QueueFull, WorkerUnavailable
from inference.requests import MAX_PIXELS, MAX_SIZE, MAX_STEPS, GenerateRequest, InvalidRequest, Request
from inference.validation import validate, validate_for_model

log = logging.getLogger(__name__)

# Interaction tokens live 15 minutes; stop using ours a little before that so an upload in
# flight doesn't die with it.
TOKEN_LIFETIME = 14 * 60.0

RESTART_NOTE = "Stepgrid is restarting. Your job keeps its place in the queue and runs once it is back."

# A job's final ledger write that fails (a disk full for a moment) is tried again, waiting this long
# between tries; after the last, it is tried again before each admission and at shutdown.
LEDGER_RETRY_DELAYS = (0.5, 2.0, 5.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True)
class Deferred:
    """An interaction deferred before its job was recorded (an attachment was read first): its message."""

    message_id: int | None


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
        metrics: Metrics | None = None,
        clock: MonotonicClock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        known_models: Mapping[str, ModelInfo] | None = None,
    ) -> None:
        self.queue = queue
        # What each model can do, read from its configs before it loads (inference.models.files): a job
        # accepted while the models load is refused at once for what its model can't do, instead of later.
        self.known_models: Mapping[str, ModelInfo] = known_models or {}
        self.metrics = metrics if metrics is not None else Metrics()
        self.store: JobStore = store if store is not None else MemoryJobStore()
        self.policy: RequestPolicy = policy if policy is not None else SettingsPolicy(Settings())
        self.edit_interval = edit_interval
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled_by: dict[str, int] = {}
        self._steps: dict[str, tuple[int, int]] = {}  # running jobs: (steps done, steps in all), for the status page
        # Final outcomes the ledger could not record yet, by job id: retried until it can.
        self._unrecorded: dict[str, JobResult | JobFailed] = {}
        self._ledger_retry: asyncio.Task[None] | None = None
        self._keep_queued = False
        self._accepting = True
        self._admission_locks: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Jobs accepted before any model was known, in the order accepted, waiting to be built.
        self._held: list[str] = []
        self._held_wakeup = asyncio.Event()  # set (and replaced) whenever a held job may go on
        self._loading_watch: asyncio.Task[None] | None = None
        self._loading_over = False
        self._stopping = False

    @property
    def active_jobs(self) -> frozenset[str]:
        """Ids of jobs whose driver is still running."""
        return frozenset(self._tasks)

    def steps_of(self, job_id: str) -> tuple[int, int] | None:
        """A running job's (steps done, steps in all) as its last progress said; None before any."""
        return self._steps.get(job_id)

    def waiting_jobs(self) -> int:
        """How many of the active jobs wait for the GPU (the rest are running or being answered)."""
        queued = sum(1 for job_id in self._tasks if self.queue.position(job_id) is not None)
        return queued + len(self._held)

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server: read once per command, for its defaults and its check."""
        return await self.policy.limits(guild_id)

    async def start_command(
        self,
        interaction: discord.Interaction,
        options: RequestOptions,
        *,
        origin: str,
        attachment: discord.Attachment | None = None,
    ) -> asyncio.Task[None]:
        """Start the job a command's options ask for; the server's limits are read once, for its
        defaults and for its check. An attached image is read from Discord after the interaction is
        deferred (a slow download can't outlast Discord's 3 s), then checked and normalised (what was
        changed in it is said with the job).

        Before the worker has reported its models, the request built now is provisional (the server's
        generic defaults): the job keeps `options` and is built again for its model once it is known.
        """
        if interaction.guild_id is None:
            raise ServerOnly()
        limits = await self.limits(interaction.guild_id)
        if attachment is None:
            if options.strength is not None:
                raise InvalidOption(
                    "strength applies to an input image: attach one with `image`, or leave strength out."
                )
            return await self._start_options(interaction, options, origin=origin, limits=limits)
        check_image_input(limits)
        self.model_for(options.model, limits)  # a model this server refuses: one line, before the defer

        async def with_image(deferred: Deferred) -> asyncio.Task[None]:
            with_input, notes = await self._with_input_image(options, attachment, limits)
            return await self._start_options(
                interaction, with_input, origin=origin, limits=limits, notes=notes, deferred=deferred
            )

        return await self._deferred_first(interaction, with_image)

    async def _start_options(
        self,
        interaction: discord.Interaction,
        options: RequestOptions,
        *,
        origin: str,
        limits: EffectiveLimits,
        notes: tuple[str, ...] = (),
        deferred: Deferred | None = None,
    ) -> asyncio.Task[None]:
        _, loras = requested_loras(options)  # a step-distillation LoRA brings its own defaults
        lora_names = [name for name, _ in loras]
        model = self.model_for(options.model, limits)
        unbuilt = options if model is None and not self.queue.ready else None
        if unbuilt is not None and not lora_names:
            self._check_before_loading(options, limits)
        request = build_request(options, limits.request_defaults(model, lora_names))
        request, steps_note = await self._with_learned_steps(request, options, model, limits, interaction.guild_id)
        return await self.start(
            interaction,
            request,
            origin=origin,
            limits=limits,
            options=unbuilt,
            notes=notes,
            deferred=deferred,
            steps_note=steps_note,
        )

    async def _with_learned_steps(
        self,
        request: Request,
        options: RequestOptions,
        model: ModelInfo | None,
        limits: EffectiveLimits,
        guild_id: int | None,
    ) -> tuple[Request, str]:
        """An /imagine from text without steps, where the server turned `learned_steps` on: the steps where its
        grids of the model and scheduler settle (else the default), and the line that says which and why."""
        if model is None or not limits.learned_steps or options.steps is not None or options.auto_steps:
            return request, ""  # steps typed, or `steps: auto` (it finds its own)
        if not isinstance(request, GenerateRequest) or request.loras or request.image or request.hires is not None:
            return request, ""  # the remembered grids are drawn from text without LoRAs
        chosen = learned_steps(
            await self.policy.sweet_spot(guild_id, request.model, request.scheduler),
            model=request.model,
            scheduler=request.scheduler,
            default_steps=request.steps,
            ceiling=min(limits.max_steps_for(model.name), model.max_steps or limits.max_steps),
            min_grids=limits.learned_steps_min_grids,
        )
        if chosen.steps is not None:
            request = dataclasses.replace(request, steps=chosen.steps)
        return request, chosen.note

    async def _deferred_first(
        self, interaction: discord.Interaction, start: Callable[[Deferred], Awaitable[asyncio.Task[None]]]
    ) -> asyncio.Task[None]:
        """Defer the interaction now, then `start` (which reads an attachment from Discord first).

        A refusal after the defer removes the "thinking…" message and is raised: the error handler
        answers it in an ephemeral follow-up. Nothing is recorded before `start` records the job, so
        a crash during the download leaves no job to answer (only the "thinking…" message).
        """
        if not self._accepting:
            raise Restarting()
        response = await interaction.response.defer(thinking=True)
        deferred = Deferred(response.message_id if response is not None else None)
        try:
            return await start(deferred)
        except Exception:
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            raise

    async def _with_input_image(
        self, options: RequestOptions, attachment: discord.Attachment, limits: EffectiveLimits
    ) -> tuple[RequestOptions, tuple[str, ...]]:
        """The options with the attachment as their input image (and its size, unless one was given)."""
        model = self.model_for(options.model, limits)
        data = await read_attachment(attachment)
        check_input_pixels(*await asyncio.to_thread(image_dimensions, data), limits)
        side = min(limits.max_image_size, MAX_SIZE)
        prepared = await asyncio.to_thread(
            prepare_input_image,
            data,
            multiple=model.size_multiple if model else 8,
            max_pixels=min(MAX_PIXELS, side * side),
        )
        size = options.size or f"{prepared.width}x{prepared.height}"
        return dataclasses.replace(options, image=prepared.png, size=size), prepared.notes

    def _check_before_loading(self, options: RequestOptions, limits: EffectiveLimits) -> None:
        """While the models load: refuse at once what the model can't do, where its configs already say so
        (the request built with that model's defaults, checked as the queue will check it once it is loaded)."""
        try:
            model = choose_model(options.model, limits, self.known_models)
        except UserFacingError:
            return  # an unknown or unavailable model is told once the worker has said which loaded
        if model is None:
            return
        request = build_request(options, limits.request_defaults(model))
        try:
            validate_for_model(request, model)
        except InvalidRequest as error:
            raise InvalidOption(str(error)) from None

    def model_for(self, name: str | None, limits: EffectiveLimits) -> ModelInfo | None:
        """The loaded model `name` means in this server (its default when None); None before the
        worker is ready. Refuses a model the server doesn't allow or that failed to load."""
        return choose_model(name, limits, self.queue.models, self.queue.unavailable_models)

    def defaults_for(self, model: str | None, limits: EffectiveLimits, loras: Sequence[str] = ()) -> RequestDefaults:
        """The defaults for options left out with this model (and LoRAs) in this server (commands and buttons)."""
        return limits.request_defaults(self.model_for(model, limits), loras)

    async def start(
        self,
        interaction: discord.Interaction,
        request: Request,
        *,
        origin: str,
        limits: EffectiveLimits | None = None,
        parent_job_id: str | None = None,
        options: RequestOptions | None = None,
        notes: tuple[str, ...] = (),
        deferred: Deferred | None = None,
        steps_note: str = "",
    ) -> asyncio.Task[None]:
        """Check `request`, defer the interaction, record the job, queue it and drive it in a task.

        The interaction is acknowledged before anything waits on the ledger (Discord drops an interaction not
        acknowledged within 3 s, and a busy ledger is slower than that): refusals that need no ledger (the
        request's own limits against the server's, read from the limits snapshot; what its model can't do)
        raise UserFacingError before the defer, with nothing answered, so they are ephemeral; refusals
        that need the ledger (the member's jobs at a time, steps today, the same job already queued) come
        after it: the "thinking…" message is removed and the error is raised (the error handler then
        answers in an ephemeral follow-up, the same words). A queue that refuses after the row exists marks
        it failed and is answered the same way. A crash between the defer and the row leaves only the
        "thinking…" message, no job to answer. `origin` is what started the job (the command or a button
        action); `limits` are the server's, when the caller has already read them. With `options` (no
        model known yet), `request` is provisional and the driver queues the job once it is built for its
        model. `deferred`: the interaction was deferred already (before an attachment was read), with that
        message. `steps_note`: where its learned steps came from, said with the result.
        """
        if interaction.guild_id is None:
            raise ServerOnly()  # Discord hides the commands in DMs, but a crafted client can still send them
        if not self._accepting:
            raise Restarting()
        if limits is None:
            limits = await self.policy.limits(interaction.guild_id)
        # The server's size limit first and in the size range: the general one (up to 2048) would suggest
        # sizes the server then refuses.
        check_sizes(request, limits)
        checked(request, max_size=size_ceiling(request, limits))
        if self.queue.unavailable:
            raise ModelUnavailable(self.queue.unavailable)
        # While the model loads (minutes with a compiled UNet) the job waits, its place shown; one accepted
        # with `options` is checked against its model once that is known.
        self._check_for_model(request)
        check_request_alone(request, limits)
        deferred_here = deferred is None  # else whoever deferred it removes the "thinking…" on a refusal
        if deferred is None:
            response = await interaction.response.defer(thinking=True)
            deferred = Deferred(response.message_id if response is not None else None)
        record = JobRecord(
            job_id=new_job_id(),
            request=request,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            origin=origin,
            parent_job_id=parent_job_id,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
            message_id=deferred.message_id,
            options=options,
            notes=notes,
            steps_note=steps_note,
        )
        job_id = record.job_id
        try:
            # One admission at a time per member: the limits count the member's jobs in the ledger, so
            # the next request is checked only once this one is recorded (else a burst slips past them).
            async with self._admission_lock(interaction.guild_id, interaction.user.id):
                # A finished job the ledger could not record yet still counts as running there.
                await self.record_pending_outcomes()
                await self.policy.check(request, limits, guild_id=interaction.guild_id, user_id=interaction.user.id)
                await self.store.record(record)
        except Exception:
            if deferred_here:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            raise
        # The row exists: every way out from here finishes it or hands it to a driver.
        deadline = self._clock() + self.token_lifetime
        try:
            if record.options is None:
                self._submit(record)
        except UserFacingError as refusal:
            await self._quietly(self.store.mark_finished(job_id, JobFailed(job_id, str(refusal))))
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            raise
        except BaseException:
            await self._quietly(self.store.mark_finished(job_id, JobFailed(job_id, "The job could not be started.")))
            raise
        log.info("job %s accepted: %s from user %s", job_id, origin, record.user_id, extra={"job_id": job_id})
        target = InteractionMessage(interaction, owner_id=record.user_id, deadline=deadline, clock=self._clock)
        return self._spawn_driver(record, target)

    def _check_for_model(self, request: Request) -> None:
        """A scheduler, size or step count the request's model can't do: one line, before anything is
        answered (so it can be ephemeral). Unknown or failed models are named the same way."""
        models = self.queue.models
        if not models:
            return
        name = request.model or next(iter(models))
        if name not in models:
            failed = self.queue.unavailable_models.get(name)
            if failed is not None:
                raise UnknownModel(f"The model {name} is unavailable: {failed.message}")
            raise UnknownModel(f"Unknown model {name!r}; choose one of: {', '.join(models)}.")
        try:
            validate_for_model(request, models[name])
        except InvalidRequest as error:
            raise InvalidOption(str(error)) from None

    def _submit(self, record: JobRecord) -> None:
        """Hand the job to the queue; its refusals become UserFacingErrors."""
        try:
            self.queue.submit(record.request, user_id=str(record.user_id), job_id=record.job_id)
        except QueueFull as error:
            raise QueueBusy(str(error)) from None
        except WorkerUnavailable:
            log.error(
                "refused job %s: the worker cannot load its model", record.job_id, extra={"job_id": record.job_id}
            )
            raise ModelUnavailable() from None
        except InvalidRequest as error:  # the queue's own model check (e.g. a model that just failed)
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
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        if record.options is not None:  # accepted while the model loaded: built once the models are known
            log.info("job %s waits for the models again after a restart", record.job_id)
            return self._spawn_driver(record, target)
        try:
            validate(record.request)  # what this version accepts may have changed since the job was
            self.queue.submit(record.request, user_id=str(record.user_id), job_id=record.job_id)
        except (QueueFull, WorkerUnavailable, InvalidRequest) as error:
            reason = "the model failed to load" if isinstance(error, WorkerUnavailable) else str(error)
            return self.answer_failed(client, record, f"it could not be queued again after a restart ({reason})",
                                      token_age=token_age)  # fmt: skip
        log.info("job %s re-queued after a restart", record.job_id, extra={"job_id": record.job_id})
        return self._spawn_driver(record, target)

    async def already_delivered(self, client: discord.Client, record: JobRecord, *, token_age: float) -> bool | None:
        """Whether the result of a job left unfinished by a restart is already on its message (None: can't tell)."""
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        return await target.shows_result()

    def answer_failed(
        self, client: discord.Client, record: JobRecord, reason: str, *, token_age: float
    ) -> asyncio.Task[None]:
        """Record a job accepted before a restart as failed and tell its owner why."""
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        failure = JobFailed(record.job_id, reason)

        async def answer() -> None:
            await self.store.mark_finished(record.job_id, failure)
            log.info("job %s answered as failed after a restart: %s", record.job_id, reason)
            await self._quietly(target.withdraw(failure_text(failure, record.request)))

        with job_context(record.job_id):
            task = asyncio.create_task(answer(), name=f"stepgrid-job-{record.job_id}")
        return self._track(record.job_id, task)

    def _spawn_driver(self, record: JobRecord, target: JobMessage) -> asyncio.Task[None]:
        if record.options is not None:
            self._held.append(record.job_id)  # here, so that jobs keep the order they were accepted in
            self._watch_loading()
        with job_context(record.job_id):  # the task inherits it: every line it logs names the job
            task = asyncio.create_task(self._drive(record, target), name=f"stepgrid-job-{record.job_id}")
        if record.options is not None:  # also when it is cancelled before it ever ran
            task.add_done_callback(lambda _: self._unhold(record.job_id))
        return self._track(record.job_id, task)

    def _track(self, job_id: str, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return task

    async def handle_button(
        self, interaction: discord.Interaction, action: str, job_id: str, number: int | None = None
    ) -> None:
        """Act on a click on one of a job's buttons (only in the server the job belongs to); `number`: on
        which image of several, or which grid cell (1-based)."""
        if interaction.guild_id is None:
            raise ServerOnly()
        record = await self.store.get(job_id)
        # Job ids are public (every footer shows one): from another server, a job is not found there.
        if record is None or record.guild_id != interaction.guild_id:
            raise JobNotFound(job_id)
        if action == "details":
            await interaction.response.send_message(embed=details_embed(record), ephemeral=True)
        elif action == "cancel":
            await self.cancel(interaction, record)
        elif action in IMAGE_ACTIONS:
            await self._start_from_result(interaction, record, action, number)
        else:
            # The job's own model, with its ladder and its ceiling in this server.
            limits = await self.limits(interaction.guild_id)
            defaults = self.defaults_for(record.request.model or None, limits)
            request = derive_request(
                record.request,
                action,
                defaults=defaults,
                max_steps=limits.max_steps_for(defaults.model or record.request.model),
                max_cells=limits.max_grid_cells,
            )
            await self.start(interaction, request, origin=action, limits=limits, parent_job_id=job_id)

    async def _start_from_result(
        self, interaction: discord.Interaction, record: JobRecord, action: str, number: int | None = None
    ) -> None:
        """Vary or Upscale of one result image (image `number` of several) or grid cell `number`: the image,
        read back from its message (a Discord attachment) after the click is deferred, or the grid's kept
        cell, as the input of a new job with that image's own settings; a size over the server's cap is
        refused before anything is queued."""
        request, read_image = await self._result_image(interaction, record, number)
        limits = await self.limits(interaction.guild_id)
        defaults = self.defaults_for(request.model or None, limits)
        model = self.model_for(request.model or None, limits)
        # The image has the result's size: an upscale over the server's cap is refused before the defer.
        check_sizes(derive_from_image(request, action, b"", request.output_size, defaults=defaults), limits)

        async def from_image(deferred: Deferred) -> asyncio.Task[None]:
            data = await read_image()
            prepared = await asyncio.to_thread(prepare_input_image, data, multiple=model.size_multiple if model else 8)
            derived = derive_from_image(
                request, action, prepared.png, (prepared.width, prepared.height), defaults=defaults
            )
            return await self.start(
                interaction, derived, origin=action, limits=limits, parent_job_id=record.job_id, deferred=deferred
            )

        await self._deferred_first(interaction, from_image)

    async def _result_image(
        self, interaction: discord.Interaction, record: JobRecord, number: int | None
    ) -> tuple[GenerateRequest, Callable[[], Awaitable[bytes]]]:
        """The one-image request that made the image a Vary or Upscale starts from, and how to read that image:
        a result's from its message, a grid cell's from the cells kept when the grid was delivered."""
        request = record.request
        if isinstance(request, GenerateRequest):
            if number is None and request.count != 1:
                raise InvalidOption("Pick one of the images with the V and U buttons under them.")
            source = request if number is None else one_of_images(request, number)
            attachment = result_attachment(interaction.message, source.seed)
            if attachment is None:
                raise InvalidOption("The result image is no longer on this message; run the prompt again.")
            return source, lambda: read_attachment(attachment)
        if number is None:
            raise InvalidOption("Pick a cell from the menus under the grid.")
        cell = grid_cell(request, number)
        png = await self.store.cell_image(record.job_id, number - 1)
        if png is None:
            raise InvalidOption("That cell's image is not kept any more; run the grid again.")

        async def kept() -> bytes:
            return png

        return cell, kept

    async def cancel(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """Cancel a queued or running job for its owner or a moderator."""
        user = interaction.user
        if user.id != record.user_id and not interaction.permissions.manage_messages:
            raise NotYourJob()
        if record.job_id in self._cancelled_by:  # a running job stops once the worker ends its current step
            await send_ephemeral(interaction, "Already cancelled; it stops after its current step.")
            return
        self._cancelled_by[record.job_id] = user.id
        if record.job_id in self._held:  # not queued yet: its driver answers it as cancelled
            log.info("job %s cancelled by user %s", record.job_id, user.id, extra={"job_id": record.job_id})
            self._wake_held()
            await send_ephemeral(interaction, "Cancelled.")
        elif self.queue.cancel(record.job_id):
            log.info("job %s cancelled by user %s", record.job_id, user.id, extra={"job_id": record.job_id})
            await send_ephemeral(interaction, "Cancelled.")
        else:
            self._cancelled_by.pop(record.job_id, None)
            await send_ephemeral(interaction, "That job has already finished.")

    def stop_accepting(self) -> None:
        """A planned shutdown starts: new jobs are refused, saying the bot is restarting."""
        self._accepting = False

    def begin_shutdown(self, *, keep_queued: bool) -> None:
        """The queue is about to close (after its grace period): call just before closing it.

        With `keep_queued`, jobs the queue fails because it is closing (waiting, or still running
        when the grace period ended) stay queued in the ledger for start-up recovery to run, and
        their owners are told so. Only for a store that outlives the process (the database).
        """
        self._accepting = False
        self._keep_queued = keep_queued
        self._stopping = True
        self._wake_held()

    async def close(self, grace: float = 10.0) -> None:
        """Wait for the drivers to answer their jobs (close the queue first), then cancel the rest."""
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for helper in (self._ledger_retry, self._loading_watch):
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
        await self.record_pending_outcomes()

    async def record_pending_outcomes(self) -> None:
        """Try again to record the outcomes the ledger refused (a disk that was full for a moment)."""
        for job_id, outcome in list(self._unrecorded.items()):
            try:
                await self.store.mark_finished(job_id, outcome)
            except Exception:
                log.warning(
                    "the ledger still can't record how job %s ended", job_id, exc_info=True, extra={"job_id": job_id}
                )
                return
            self._unrecorded.pop(job_id, None)
            self.queue.recorded(job_id)
            log.info("job %s: its outcome is recorded in the ledger now", job_id, extra={"job_id": job_id})

    async def _record_outcome(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        """Record how a job ended; if the ledger refuses, keep it and try again in the background.

        The member must not stay "running" in the ledger (it counts against their concurrent jobs),
        and a job whose answer was sent must not look unfinished to the next start.
        """
        try:
            await self.store.mark_finished(job_id, outcome)
            self.queue.recorded(job_id)
            return
        except Exception:
            if isinstance(outcome, JobResult):
                log.exception("job %s was delivered but the ledger could not record its result; trying again", job_id)
            else:
                log.exception("job %s ended but the ledger could not record how; trying again", job_id)
        self._unrecorded[job_id] = outcome
        if self._ledger_retry is None or self._ledger_retry.done():
            self._ledger_retry = asyncio.create_task(self._retry_ledger(), name="stepgrid-ledger-retry")

    async def _retry_ledger(self) -> None:
        for delay in LEDGER_RETRY_DELAYS:
            await self._sleep(delay)
            await self.record_pending_outcomes()
            if not self._unrecorded:
                return
        log.error("the ledger could not record %d job outcome(s); trying again at the next job", len(self._unrecorded))

    async def _drive(self, record: JobRecord, target: JobMessage) -> None:
        job_id = record.job_id
        editor: ThrottledEditor[MessageUpdate] = ThrottledEditor(
            target.show, interval=self.edit_interval, clock=self._clock, sleep=self._sleep
        )
        state = ProgressState(loading=not self.queue.ready)
        marked_running = False
        screening = await self._screening(record, target)
        try:
            if record.options is not None:
                built = await self._build_when_loaded(record, target, editor, state)
                if built is None:
                    return
                record = built
            position = self.queue.position(job_id)
            if position is not None:
                state.position = position
            state.eta = self.queue.estimate(job_id)
            editor.push(progress_message(record, state))
            async for event in self.queue.events(job_id):
                if isinstance(event, JobResult):
                    await self._finish_with_result(record, event, target, editor, await self._screening(record, target))
                    return
                if isinstance(event, JobFailed):
                    if self._keep_queued and not event.cancelled:
                        await self._leave_queued(record, state, editor, started=marked_running)
                    else:
                        # A worker that crashed can't say how many steps ran; the bot saw them.
                        failure = dataclasses.replace(event, steps_run=max(event.steps_run, state.steps_seen))
                        await self._finish_with_failure(record, failure, target, editor)
                    return
                if isinstance(event, JobStarted) and not marked_running:
                    # Once per driver: the queue's own retries (worker crash, out of memory) start
                    # the job again, but the ledger's attempts count the bot runs that started it.
                    await self.store.mark_running(job_id)
                    marked_running = True
                if isinstance(event, JobProgress) and screening.hides_preview(event):
                    state.stop_previews()
                elif isinstance(event, JobProgress) and screening.spoils_preview(event):
                    state.preview_spoiler = True
                state.apply(event)
                if isinstance(event, JobProgress):
                    self._steps[job_id] = (event.job_step, event.job_total)
                state.eta = self.queue.estimate(job_id)
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
            if job_id not in self._unrecorded:
                failure = JobFailed(job_id, f"bot error (ref {reference})", steps_run=state.steps_seen)
                self._count(record, failure)
                await self._quietly(self.store.mark_finished(job_id, failure))
            await self._quietly(
                target.withdraw(f"Something went wrong on my side (ref `{reference}`). It has been logged; try again.")
            )
        finally:
            self._cancelled_by.pop(job_id, None)
            self._steps.pop(job_id, None)

    async def _screening(self, record: JobRecord, target: JobMessage) -> Screening:
        """How flagged pictures are handled where the job's message is, under its server's choice now; if the
        server's limits can't be read, flagged pictures are withheld."""
        try:
            limits = await self.limits(record.guild_id)
        except Exception:
            log.warning("job %s: could not read its server's limits; flagged pictures are withheld", record.job_id,
                        exc_info=True)  # fmt: skip
            return Screening(posts_flagged=False)
        posts = limits.posts_flagged(age_restricted=target.age_restricted)
        return Screening(posts_flagged=posts, spoiler=limits.spoils_flagged)

    # -- jobs accepted before the models were known ----------------------------------------------

    def _watch_loading(self) -> None:
        if self._loading_watch is None:
            self._loading_watch = asyncio.create_task(self._await_loading(), name="stepgrid-await-models")

    async def _await_loading(self) -> None:
        try:
            await self.queue.wait_ready()
        except Exception as error:  # the model failed to load: the held jobs are answered with the queue's reason
            log.info("the held jobs can't be built: %s", error)
        self._loading_over = True
        self._wake_held()

    def _unhold(self, job_id: str) -> None:
        if job_id in self._held:
            self._held.remove(job_id)
            self._wake_held()  # the next one may go on, and the others' places move up

    def _wake_held(self) -> None:
        wakeup, self._held_wakeup = self._held_wakeup, asyncio.Event()
        wakeup.set()

    async def _build_when_loaded(
        self, record: JobRecord, target: JobMessage, editor: ThrottledEditor[MessageUpdate], state: ProgressState
    ) -> JobRecord | None:
        """Hold a job accepted before the models were known until they are, then build it with its model's
        defaults, check it as if it came now and queue it (held jobs go in the order accepted).

        The record as queued, or None once the job is answered here: cancelled, refused (on its message,
        saying what to change), or left queued in the ledger by a shutdown.
        """
        job_id = record.job_id
        state.loading = True
        try:
            while True:
                wakeup = self._held_wakeup
                if job_id in self._cancelled_by:
                    await self._finish_with_failure(record, JobFailed.cancellation(job_id), target, editor)
                    return None
                if self._stopping:
                    if self._keep_queued:  # the row keeps its options: the next start builds it
                        await self._leave_queued(record, state, editor, started=False)
                    else:
                        failure = JobFailed(job_id, "Stepgrid is shutting down; this job did not run.", retryable=True)
                        await self._finish_with_failure(record, failure, target, editor)
                    return None
                if self._loading_over and self._held[0] == job_id:
                    break
                position = self._held.index(job_id) + 1
                if position != state.position:
                    state.position = position
                    editor.push(progress_message(record, state))
                await wakeup.wait()
            try:
                request, steps_note = await self._built(record)
                await self.store.set_request(job_id, request, steps_note=steps_note)
                record = dataclasses.replace(record, request=request, options=None, steps_note=steps_note)
                self._submit(record)
            except UserFacingError as refusal:
                await self._finish_with_failure(record, JobFailed(job_id, str(refusal)), target, editor)
                return None
            state.position, state.loading = None, not self.queue.ready
            log.info("job %s built for model %s and queued", job_id, request.model or "(default)")
            return record
        finally:
            self._unhold(job_id)

    async def _built(self, record: JobRecord) -> tuple[Request, str]:
        """The held job's request with its model's defaults in its server now (the seed drawn at acceptance
        kept), through the checks a command meets before it is accepted that depend on the model; and where its
        learned steps came from."""
        assert record.options is not None
        if self.queue.unavailable:
            raise ModelUnavailable(self.queue.unavailable)
        # The seed drawn at acceptance; an input image kept on disk with the job (not among the stored options).
        options = dataclasses.replace(
            record.options, seed=record.request.seed, image=record.options.image or record.request.image or None
        )
        limits = await self.limits(record.guild_id)
        _, loras = requested_loras(options)
        request = build_request(options, self.defaults_for(options.model, limits, [name for name, _ in loras]))
        model = self.model_for(options.model, limits)
        request, steps_note = await self._with_learned_steps(request, options, model, limits, record.guild_id)
        check_sizes(request, limits)
        checked(request, max_size=size_ceiling(request, limits))
        self._check_for_model(request)
        # The per-request limits; the member's quota and running jobs were counted when it was accepted.
        check_request(request, limits, steps_used_today=0, active_jobs=0)
        return request, steps_note

    async def _finish_with_result(
        self,
        record: JobRecord,
        result: JobResult,
        target: JobMessage,
        editor: ThrottledEditor[MessageUpdate],
        screening: Screening,
    ) -> None:
        rendered = await asyncio.to_thread(
            encode_result_files, record, result, limit=target.attachment_limit, screening=screening
        )
        await self._keep_cells(record, result, screening)
        if rendered.withheld:
            log.info("job %s: %d flagged picture(s) withheld in this channel", record.job_id, rendered.withheld)
            self.metrics.images_withheld.inc(rendered.withheld)
        # Recorded before the upload: if the bot dies between the upload and the last write, the
        # next start finds the row "delivering", sees the result on the job's message and does not
        # run the job a second time. A ledger that refuses this write doesn't hold the result back.
        try:
            await self.store.mark_delivering(record.job_id, result, withheld=rendered.withheld)
        except Exception:
            log.exception("job %s: the ledger could not record its result before the upload", record.job_id)
        # Before the upload too: once a member sees the grid, `/sweet-spots` and learned steps count it.
        await self._remember_settle_points(record, result, screening)
        message = result_message(record, result, rendered, max_steps=await self._step_ceiling(record))
        await editor.finish(message)
        # Delivered: from here on a failure must not withdraw the result the user already has.
        self._count(record, result, model=result.model)
        await self._record_outcome(record.job_id, result)
        if record.job_id in self._unrecorded:
            return
        log.info("job %s done: %d image(s), %.2f GPU s", record.job_id, len(result.images), result.gpu_seconds)

    async def _keep_cells(self, record: JobRecord, result: JobResult, screening: Screening) -> None:
        """A grid's cells as the worker made them, kept before the grid is posted so that its cell menus
        (Vary, Upscale) start from the cell itself; withheld cells are not kept. The result goes out anyway
        if they can't be kept."""
        if isinstance(record.request, GenerateRequest):
            return
        withheld = screening.withheld(result)
        cells = {index: image.png for index, image in enumerate(result.images) if index not in withheld}
        try:
            await self.store.keep_cells(record.job_id, cells)
        except Exception:
            log.exception("job %s: could not keep its grid's cells", record.job_id, extra={"job_id": record.job_id})

    async def _remember_settle_points(self, record: JobRecord, result: JobResult, screening: Screening) -> None:
        """Where each row of a delivered step-ladder grid settled, into its server's memory (rows with a withheld
        cell left out: they were measured on a tile). A failure here is logged; the member has the result."""
        model = result.model or record.request.model
        try:
            rows = await asyncio.to_thread(remembered_rows, record.request, result.images, screening.withheld(result))
            if rows and model:
                settled = [SettledRow(index, row.scheduler, row.steps, settle_step(row)) for index, row in rows]
                await self.store.remember_settle_points(record, model=model, rows=settled)
        except Exception:
            log.exception("job %s: could not remember where its grid settled", record.job_id)

    async def _step_ceiling(self, record: JobRecord) -> int:
        """The most steps the job's model may run in its server now: where the result's "more" button stops."""
        try:
            limits = await self.limits(record.guild_id)
        except Exception:  # the result matters more than one button's label
            log.warning("job %s: could not read its server's limits", record.job_id, exc_info=True)
            return MAX_STEPS
        return limits.max_steps_for(record.request.model)

    async def _leave_queued(
        self, record: JobRecord, state: ProgressState, editor: ThrottledEditor[MessageUpdate], *, started: bool
    ) -> None:
        # The ledger row stays (or is again) queued: start-up recovery runs the job again and edits this message.
        if started:
            await self._quietly(self.store.mark_interrupted(record.job_id))
        log.info("job %s stays queued in the ledger for the next start", record.job_id)
        note = dataclasses.replace(progress_message(record, state), content=RESTART_NOTE, view=None)
        await self._quietly(editor.finish(note))

    async def _finish_with_failure(
        self, record: JobRecord, failure: JobFailed, target: JobMessage, editor: ThrottledEditor[MessageUpdate]
    ) -> None:
        await editor.stop()
        self._count(record, failure)
        await self._record_outcome(record.job_id, failure)
        if failure.cancelled:
            cancelled_by = self._cancelled_by.get(record.job_id)
            # The owner who clicked Cancel was already told; anyone else hears it here.
            if cancelled_by == record.user_id:
                await target.withdraw(None)
            else:
                await target.withdraw(
                    failure_text(failure, record.request, cancelled_by_other=cancelled_by is not None)
                )
        else:
            log.info("job %s failed: %s", record.job_id, failure.message)
            await target.withdraw(failure_text(failure, record.request))

    def _count(self, record: JobRecord, outcome: JobResult | JobFailed, *, model: str = "") -> None:
        """Count an answered job in the metrics."""
        request = record.request
        if isinstance(outcome, JobResult):
            name, images = "done", len(outcome.images)
        else:
            name, images = ("cancelled" if outcome.cancelled else "failed"), 0
        self.metrics.job_answered(
            command=command_of(request),
            model=model or request.model or next(iter(self.queue.models), ""),
            scheduler=request.scheduler,
            outcome=name,
            images=images,
            steps=outcome.steps_run,
            gpu_seconds=outcome.gpu_seconds,
            queue_seconds=outcome.queue_seconds,
        )

    @staticmethod
    async def _quietly(awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except Exception:
            log.warning("could not tell the user about a failed job", exc_info=True)
