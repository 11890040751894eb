"""What a click on a job's buttons does: details, cancel, and the new jobs a result's buttons start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import discord

from bot.errors import InvalidOption, JobNotFound, NotYourJob, ServerOnly, send_ephemeral
from bot.job_requests import derive_from_image, derive_request, grid_cell, one_of_images
from bot.jobs.admission import Admission
from bot.jobs.attachments import read_attachment
from bot.jobs.core import Deferred
from bot.limits.checks import check_sizes
from bot.pictures.input_image import prepare_input_image
from bot.replies.buttons import IMAGE_ACTIONS
from bot.replies.messages import details_embed, result_attachment
from bot.storage.job_store import JobRecord
from inference.requests import GenerateRequest

log = logging.getLogger(__name__)


class ButtonActions(Admission):
    """Acts on a job's buttons (bot.replies.buttons draws them): each action starts a job through admission."""

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
