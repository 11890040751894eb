"""An attached image through the job service: the server's switches and caps, the defer before the
download, and what was changed in the image said with the result, also after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import cast

import discord
import pytest
from PIL import Image

from bot.config import Settings
from bot.errors import InvalidOption, report_error
from bot.job_requests import RequestOptions
from bot.jobs.policy import SettingsPolicy
from bot.limits.server import LimitExceeded
from bot.storage.database import Database
from bot.storage.job_store import record_of
from inference.requests import GenerateRequest
from tests.bot.fakes import Harness, database_harness, http_error, png_of, result_for

OPTIONS = RequestOptions("a lighthouse", size="256", steps=8)


class FakeAttachment:
    """A member's attachment whose download waits for `gate` (set by the test) when one is given."""

    def __init__(self, data: bytes, *, gate: asyncio.Event | None = None, gone: bool = False) -> None:
        self.data = data
        self.size = len(data)
        self.filename = "photo.png"
        self.gate = gate
        self.gone = gone
        self.downloading = asyncio.Event()

    async def read(self) -> bytes:
        self.downloading.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.gone:
            raise http_error(404, 0, "Not Found")
        return self.data

    def as_attachment(self) -> discord.Attachment:
        return cast(discord.Attachment, self)


def cmyk_jpeg(size: tuple[int, int] = (256, 256)) -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", size, (0, 255, 0, 0)).save(out, format="JPEG")
    return out.getvalue()


def with_operator(harness: Harness, **settings: object) -> Harness:
    harness.service.policy = SettingsPolicy(Settings(_env_file=None, **settings))  # type: ignore[call-arg, arg-type]
    return harness


async def test_image_input_switched_off_is_one_line_before_anything_is_read_or_answered() -> None:
    harness = with_operator(Harness(), image_input=False)
    interaction = harness.interaction()
    attachment = FakeAttachment(png_of(256, 256))
    with pytest.raises(LimitExceeded, match="This server has switched image input off"):
        await harness.service.start_command(
            interaction.as_interaction(), OPTIONS, origin="imagine", attachment=attachment.as_attachment()
        )
    assert interaction.recorder.calls == [], "nothing answered yet: the error handler's answer can be ephemeral"
    assert not attachment.downloading.is_set()
    assert harness.queue.requests == {}


async def test_an_image_over_the_servers_pixel_cap_is_refused_after_the_defer_and_nothing_is_queued() -> None:
    harness = with_operator(Harness(), max_input_megapixels=0.1)
    interaction = harness.interaction()
    attachment = FakeAttachment(png_of(400, 300))
    with pytest.raises(LimitExceeded) as caught:
        await harness.service.start_command(
            interaction.as_interaction(), OPTIONS, origin="imagine", attachment=attachment.as_attachment()
        )
    assert str(caught.value) == (
        "That image is 400x300 (0.12 megapixels); this server takes images of at most 0.1 megapixels. "
        "Send a smaller one."
    )
    assert [call.kind for call in interaction.recorder.calls] == ["defer", "delete"], "the thinking message goes"
    assert harness.queue.requests == {} and harness.store.jobs == {}
    await report_error(interaction.as_interaction(), caught.value)
    answer = interaction.recorder.calls[-1]
    assert (answer.kind, answer.ephemeral) == ("followup", True) and "0.12 megapixels" in (answer.content or "")


async def test_the_interaction_is_deferred_before_the_attachment_is_downloaded() -> None:
    harness = Harness()
    interaction = harness.interaction()
    gate = asyncio.Event()
    attachment = FakeAttachment(png_of(256, 256), gate=gate)
    starting = asyncio.create_task(
        harness.service.start_command(
            interaction.as_interaction(), OPTIONS, origin="imagine", attachment=attachment.as_attachment()
        )
    )
    await attachment.downloading.wait()
    await interaction.recorder.wait_for(lambda calls: [call.kind for call in calls] == ["defer"])
    assert harness.queue.requests == {}, "the download is still held"
    gate.set()
    task = await starting
    [job_id] = harness.queue.job_ids
    request = harness.queue.requests[job_id]
    assert isinstance(request, GenerateRequest) and request.image.startswith(b"\x89PNG")
    assert harness.store.jobs[job_id].message_id == interaction.response.message_id
    assert [call.kind for call in interaction.recorder.calls].count("defer") == 1
    harness.queue.emit(result_for(job_id, request))
    await task


async def test_an_attachment_gone_from_discord_is_answered_in_a_followup_after_the_defer() -> None:
    harness = Harness()
    interaction = harness.interaction()
    attachment = FakeAttachment(png_of(256, 256), gone=True)
    with pytest.raises(InvalidOption, match="could not be fetched from Discord; attach it again") as caught:
        await harness.service.start_command(
            interaction.as_interaction(), OPTIONS, origin="imagine", attachment=attachment.as_attachment()
        )
    assert [call.kind for call in interaction.recorder.calls] == ["defer", "delete"]
    await report_error(interaction.as_interaction(), caught.value)
    assert interaction.recorder.calls[-1].kind == "followup" and interaction.recorder.calls[-1].ephemeral


async def test_what_was_changed_in_the_image_is_said_with_the_result_after_a_restart(database: Database) -> None:
    harness = database_harness(database)
    interaction = harness.interaction()
    attachment = FakeAttachment(cmyk_jpeg())
    task = await harness.service.start_command(
        interaction.as_interaction(), OPTIONS, origin="imagine", attachment=attachment.as_attachment()
    )
    [job_id] = harness.queue.job_ids
    harness.service.begin_shutdown(keep_queued=False)
    task.cancel()  # the bot goes down with the job queued: its row stays as it was
    await asyncio.gather(task, return_exceptions=True)

    row = await database.ledger.get_job(job_id)
    assert row is not None and row.status == "queued"
    record = record_of(row, database.inputs)
    assert record.notes == ("it was converted from CMYK to RGB",)
    restarted = database_harness(database)
    recorder_owner = restarted.interaction()
    client = cast(discord.Client, recorder_owner.client)
    resumed = restarted.service.resume(client, dataclasses.replace(record, interaction_token=None), token_age=900.0)
    [queued] = await restarted.queue.wait_for_jobs(1)
    restarted.queue.emit(result_for(queued, restarted.queue.requests[queued]))
    await resumed
    [posted] = [call for call in recorder_owner.recorder.calls if call.files]  # the channel message's last edit
    fields = {field.name: field.value for field in posted.embeds[0].fields}
    assert fields["Input image"] == "it was converted from CMYK to RGB"
