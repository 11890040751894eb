"""Admission: a request from a command or a button checked, recorded, queued and handed to its driver.

A command sent while the worker is still loading can't have its model's defaults yet (its native
size, steps, scheduler): the job is recorded with what the member typed, held in the bot until the
models are known, then built (`_built`) and checked as if it had come then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable

import discord

from bot.errors import InvalidOption, ModelUnavailable, QueueBusy, Restarting, ServerOnly, UserFacingError
from bot.job_requests import RequestOptions, build_request, checked, requested_loras
from bot.jobs.attachments import read_attachment
from bot.jobs.core import Deferred, ServiceCore
from bot.jobs.learned_steps import learned_steps
from bot.limits.checks import (
    check_image_input,
    check_input_pixels,
    check_request,
    check_request_alone,
    check_sizes,
    size_ceiling,
)
from bot.limits.server import EffectiveLimits, UnknownModel, choose_model
from bot.pictures.input_image import image_dimensions, prepare_input_image
from bot.replies.reply import InteractionMessage
from bot.storage.job_store import JobRecord
from inference.model_info import ModelInfo
from inference.protocol import JobFailed
from inference.queues.base import QueueFull, WorkerUnavailable
from inference.requests import MAX_PIXELS, MAX_SIZE, GenerateRequest, InvalidRequest, Request
from inference.validation import validate_for_model

log = logging.getLogger(__name__)


def new_job_id() -> str:
    """A job id short enough for a button's custom id."""
    return uuid.uuid4().hex


class Admission(ServiceCore):
    """Checks a request, defers the interaction, records the job and queues it."""

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
        deferred = await Deferred.of(interaction)
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
            deferred = await Deferred.of(interaction)
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
