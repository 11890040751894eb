"""Grids from an image end to end: a member attaches an image to /compare-strength (or /compare-steps) on the
fake Discord, the real bot reads and checks it and the server's limits, and the real worker runs the grid."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from inference.parameters import PNG_KEY
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.requests import CompareStepsRequest, CompareStrengthRequest
from tests.a1111 import parse_generation_parameters
from tests.e2e.helpers import e2e_settings, embed_fields, image_of, result_files, running_bot, wait_for_result
from tests.fake_discord import FakeDiscord, attachment_option
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    async with started_queue(LocalJobQueue(tiny_config, max_length=20, hang_seconds=120)) as queue:
        yield queue


def photo(size: tuple[int, int] = (256, 256)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 160, 40)).save(out, format="JPEG")
    return out.getvalue()


def with_image(fake: FakeDiscord, options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The command's options with an uploaded photo as its `image`, and the interaction's resolved data."""
    option, resolved = attachment_option("image", fake.member_upload("photo.jpg", photo(), "image/jpeg"))
    types = {str: 3, int: 4, float: 10}
    listed = [{"name": name, "type": types[type(value)], "value": value} for name, value in options.items()]
    return [*listed, option], resolved


async def test_compare_strength_runs_an_attached_image_at_each_strength_and_says_what_ran(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    options, resolved = with_image(
        fake, {"prompt": "a sun", "strengths": "0.9, 0.5", "steps": "4", "scheduler": "Euler", "seed": 9}
    )
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("compare-strength", options, resolved=resolved)
        final = await wait_for_result(handle)
        (submitted,) = queue.submitted
    request = submitted.request
    assert isinstance(request, CompareStrengthRequest) and request.image.startswith(b"\x89PNG")
    assert (request.strengths, request.steps, request.width, request.height) == ((0.5, 0.9), (4,), 256, 256)
    [grid] = result_files(final)
    assert grid.filename == "stepgrid-compare-9.png"
    parameters = parse_generation_parameters(image_of(grid.data).text[PNG_KEY])
    assert (parameters["X Type"], parameters["X Values"], parameters["Denoising strength"]) == (
        "Denoising", "0.5, 0.9", "0.5"
    )  # fmt: skip
    assert embed_fields(final)["Steps"] == "4 steps · strength 0.5, 0.9 · ran 2, 3"
    assert "4 steps at strength 0.5, 0.9 ran 2, 3 steps" in final.data["content"]


@pytest.mark.parametrize(
    ("limits", "options", "refusal"),
    [
        (
            {"max_grid_cells": 4},
            {"strengths": "0.3,0.5,0.7", "steps": "4,6"},
            "This server allows grids of at most 4 cells; you asked for 6 (3 strengths × 2 step counts)",
        ),
        ({"max_steps": 20}, {"steps": "10,30"}, "This server allows at most 20 steps; you asked for 30."),
        (
            {"max_compute_per_request": 256 * 256 * 10},
            {"strengths": "0.5,1", "steps": "8"},
            "This request needs 786.4k pixel-steps (256×256 × 12 steps that run over 2 cells)",
        ),
    ],
)
async def test_compare_strength_over_a_server_limit_is_refused_before_it_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, limits: dict[str, int], options: dict[str, str], refusal: str
) -> None:
    listed, resolved = with_image(fake, {"prompt": "a sun", **options})
    async with running_bot(fake, worker, settings=e2e_settings(**limits)) as (_, queue):
        handle = await fake.invoke("compare-strength", listed, resolved=resolved)
        # An attachment is read after the defer (Discord's 3 s): the refusal is a private follow-up.
        assert (await handle.wait_for_callback()).json["type"] == 5
        answer = await handle.wait_for_followup()
        assert answer.ephemeral and refusal in answer.json["content"]
        assert int(handle.original_message["id"]) in fake.deleted_messages, "no thinking message is left"
        assert not queue.submitted


async def test_compare_steps_starts_every_cell_from_an_attached_image(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    options, resolved = with_image(
        fake, {"prompt": "a sun", "steps": "4,8", "strength": 0.5, "scheduler": "Euler", "seed": 2}
    )
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("compare-steps", options, resolved=resolved)
        final = await wait_for_result(handle)
        (submitted,) = queue.submitted
    request = submitted.request
    assert isinstance(request, CompareStepsRequest) and request.image and request.strength == 0.5
    assert embed_fields(final)["Steps"] == "4, 8 · strength 0.5 · ran 2, 4"
    [grid] = result_files(final)
    assert parse_generation_parameters(image_of(grid.data).text[PNG_KEY])["Denoising strength"] == "0.5"
