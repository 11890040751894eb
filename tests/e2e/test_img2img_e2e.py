"""img2img end to end: a member attaches an image to /imagine on the fake Discord (served on loopback
like the CDN), the real bot reads it, checks and normalises it, and the real worker starts from it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.storage.database import Database
from inference.parameters import PNG_KEY
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.a1111 import parse_generation_parameters
from tests.e2e.helpers import (
    button,
    e2e_settings,
    embed_fields,
    image_of,
    result_files,
    running_bot,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord, attachment_option
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    async with started_queue(LocalJobQueue(tiny_config, max_length=20, hang_seconds=120)) as queue:
        yield queue


def uploaded_png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 40, 40, 128) if mode == "RGBA" else (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


async def test_imagine_starts_from_an_attached_image_and_says_what_ran(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    attachment = fake.member_upload("photo.png", uploaded_png((320, 256)))
    option, resolved = attachment_option("image", attachment)
    options = [
        {"name": "prompt", "type": 3, "value": "a lighthouse"},
        {"name": "steps", "type": 4, "value": 8},
        {"name": "scheduler", "type": 3, "value": "Euler"},
        {"name": "seed", "type": 4, "value": 7},
        {"name": "strength", "type": 10, "value": 0.5},
        option,
    ]
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", options, resolved=resolved)
        final = await wait_for_result(handle)
        (submitted,) = queue.submitted
    request = submitted.request
    assert request.image.startswith(b"\x89PNG") and request.strength == 0.5
    [png] = result_files(final)
    assert image_of(png.data).size == (320, 256), "the result keeps the input image's size"
    fields = embed_fields(final)
    assert fields["Steps"] == "8 steps · strength 0.5 · 4 ran"
    assert "transparency was flattened onto white" in fields["Input image"]
    parameters = parse_generation_parameters(image_of(png.data).text[PNG_KEY])
    assert parameters["Denoising strength"] == "0.5"


async def test_an_attachment_that_is_not_an_image_gets_one_line_and_nothing_runs(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    attachment = fake.member_upload("notes.txt", b"just some text", "text/plain")
    option, resolved = attachment_option("image", attachment)
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", [{"name": "prompt", "type": 3, "value": "a fox"}, option],
                                   resolved=resolved)  # fmt: skip
        assert (await handle.wait_for_callback()).json["type"] == 5, "deferred before the download"
        answer = await handle.wait_for_followup()
        assert answer.ephemeral
        assert answer.json["content"] == "That attachment is not an image Stepgrid can read; send a PNG, JPEG or WebP."
        assert int(handle.original_message["id"]) in fake.deleted_messages, "no thinking message is left"
        assert not queue.submitted


async def test_strength_without_an_image_is_refused(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", {"prompt": "a fox", "strength": 0.5})
        answer = await handle.wait_for_callback()
        assert answer.ephemeral and "strength applies to an input image" in answer.json["data"]["content"]
        assert not queue.submitted


async def test_vary_and_upscale_start_from_the_result_image(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    options = {"prompt": "a lighthouse", "steps": 6, "size": "256", "scheduler": "Euler", "seed": 5}
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", options)
        final = await wait_for_result(handle)
        message = handle.original_message
        [posted] = result_files(final)
        click = await fake.click(message, button(message, "vary-strong"))
        varied = await wait_for_result(click)
        click = await fake.click(message, button(message, "upscale"))
        upscaled = await wait_for_result(click)
        first, vary, upscale = (s.request for s in queue.submitted)
    assert vary.image and vary.strength == 0.7 and vary.seed != first.seed
    assert image_of(vary.image).tobytes() == image_of(posted.data).tobytes(), "Vary starts from the posted image"
    assert embed_fields(varied)["Steps"] == "6 steps · strength 0.7 · 4 ran"
    assert upscale.hires is not None and upscale.upscale_only
    [big] = result_files(upscaled)
    assert image_of(big.data).size == (512, 512)
    assert "×2 Lanczos" in embed_fields(upscaled)["Steps"]


async def test_upscale_over_the_servers_size_cap_is_refused_before_it_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    from tests.e2e.helpers import e2e_settings

    settings = e2e_settings(max_image_size=384)
    async with running_bot(fake, worker, settings=settings) as (_, queue):
        handle = await fake.invoke(
            "imagine", {"prompt": "a lighthouse", "steps": 4, "size": "256", "scheduler": "Euler"}
        )
        await wait_for_result(handle)
        message = handle.original_message
        click = await fake.click(message, button(message, "upscale"))
        answer = await click.wait_for_callback()
        assert answer.ephemeral and "would be 512x512" in answer.json["data"]["content"]
        assert len(queue.submitted) == 1


async def test_a_slow_attachment_download_starts_after_the_interaction_is_deferred(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    attachment = fake.member_upload("photo.png", uploaded_png((256, 256), "RGB"))
    release = fake.hold_attachment(attachment)  # the CDN answers only when the test says
    option, resolved = attachment_option("image", attachment)
    options = [{"name": "prompt", "type": 3, "value": "a lighthouse"}, {"name": "steps", "type": 4, "value": 4},
               {"name": "scheduler", "type": 3, "value": "Euler"}, option]  # fmt: skip
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", options, resolved=resolved)
        await fake.wait_for_download(attachment)
        callback = await handle.wait_for_callback()
        assert callback.ok and callback.json["type"] == 5, "deferred while the download is held"
        assert not release.is_set() and not queue.submitted
        release.set()
        final = await wait_for_result(handle)
        assert len(queue.submitted) == 1
    [png] = result_files(final)
    assert image_of(png.data).size == (256, 256)


async def test_image_input_switched_off_by_an_admin_is_one_line_and_nothing_is_read_or_run(
    fake: FakeDiscord, worker: LocalJobQueue, tmp_path: Path
) -> None:
    attachment = fake.member_upload("photo.png", uploaded_png((256, 256), "RGB"))
    option, resolved = attachment_option("image", attachment)
    async with Database(tmp_path / "stepgrid.sqlite3", e2e_settings()) as database:
        async with running_bot(fake, worker, database=database) as (_, queue):
            changed = await (
                await fake.invoke("limits-set", {"image_input": False}, user=fake.admin)
            ).wait_for_callback()
            assert "**image input**: off" in (changed.json["data"]["content"] or "")
            handle = await fake.invoke("imagine", [{"name": "prompt", "type": 3, "value": "a fox"}, option],
                                       resolved=resolved)  # fmt: skip
            answer = await handle.wait_for_callback()
            assert answer.json["type"] == 4 and answer.ephemeral
            assert answer.json["data"]["content"] == (
                "This server has switched image input off; run the command without an image."
            )
            assert not queue.submitted and not fake.attachment_downloads
        history = await database.server_limits.limits_history(fake.guild.id)
    assert [(change.field, change.old_value, change.new_value) for change in history] == [("image_input", None, False)]


async def test_an_attachment_over_the_servers_pixel_cap_is_answered_in_a_followup_and_nothing_runs(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    attachment = fake.member_upload("photo.png", uploaded_png((512, 400), "RGB"))
    option, resolved = attachment_option("image", attachment)
    settings = e2e_settings(max_input_megapixels=0.2)
    async with running_bot(fake, worker, settings=settings) as (_, queue):
        handle = await fake.invoke("imagine", [{"name": "prompt", "type": 3, "value": "a fox"}, option],
                                   resolved=resolved)  # fmt: skip
        assert (await handle.wait_for_callback()).json["type"] == 5
        answer = await handle.wait_for_followup()
        assert answer.ephemeral and answer.json["content"] == (
            "That image is 512x400 (0.205 megapixels); this server takes images of at most 0.2 megapixels. "
            "Send a smaller one."
        )
        assert int(handle.original_message["id"]) in fake.deleted_messages, "no thinking message is left"
        assert not queue.submitted
