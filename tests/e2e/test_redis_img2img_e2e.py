"""img2img through Redis: a member attaches an image to /imagine on the fake Discord, the bot's Redis queue
sends it with the job to an agent (its own spawned worker, a real redis-server between them), and the
result that comes back is the one the local worker makes of the same request: the input went byte for byte."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import cast

import pytest
import pytest_asyncio
from PIL import Image

from inference.protocol import JobResult, WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.requests import GenerateRequest
from tests.e2e.helpers import SharedQueue, embed_fields, image_of, result_files, running_bot, wait_for_result
from tests.fake_discord import FakeDiscord, attachment_option, running_fake
from tests.inference.redis_backends import Backend, started_backend
from tests.redis_server import RedisServer
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tiny_config: WorkerConfig, redis_server: RedisServer) -> AsyncIterator[Backend]:
    async with started_backend("redis", tiny_config, redis_url=redis_server.url, hang_seconds=120) as backend:
        yield backend


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=120.0) as fake:  # a hang guard on a busy CPU, not a timing expectation
        yield fake


def photo(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(out, format="PNG")
    return out.getvalue()


async def test_an_imagine_with_an_image_runs_on_a_redis_agent_with_its_input(
    fake: FakeDiscord, backend: Backend, tiny_config: WorkerConfig
) -> None:
    attachment = fake.member_upload("photo.png", photo((320, 256)))
    option, resolved = attachment_option("image", attachment)
    options = [
        {"name": "prompt", "type": 3, "value": "a lighthouse"},
        {"name": "steps", "type": 4, "value": 8},
        {"name": "scheduler", "type": 3, "value": "Euler"},
        {"name": "seed", "type": 4, "value": 11},
        {"name": "strength", "type": 10, "value": 0.5},
        option,
    ]
    queue = SharedQueue(cast(LocalJobQueue, backend.queue))  # the bot's RedisJobQueue behind the tests' view
    async with running_bot(fake, cast(LocalJobQueue, backend.queue), queue=queue):
        final = await wait_for_result(await fake.invoke("imagine", options, resolved=resolved))
    [submitted] = queue.submitted
    request = submitted.request
    assert isinstance(request, GenerateRequest) and request.image and request.strength == 0.5
    assert embed_fields(final)["Steps"] == "8 steps · strength 0.5 · 4 ran"
    [png] = result_files(final)
    assert image_of(png.data).size == (320, 256)

    async with started_queue(LocalJobQueue(tiny_config, hang_seconds=120)) as local:
        job_id = local.submit(request, user_id="1")
        outcome = [event async for event in local.events(job_id) if isinstance(event, JobResult)]
    [result] = outcome
    assert image_of(result.images[0].png).tobytes() == image_of(png.data).tobytes(), "the same run as on the agent"
