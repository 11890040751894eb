"""The JobQueue contract, run against both backends: the local pipe and Redis Streams.

Each backend runs the tiny model in a real spawned worker; the Redis one talks through a real
redis-server started by the tests. Waits are on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from inference.protocol import JobEvent, JobFailed, JobProgress, JobResult, JobStarted, WorkerConfig
from inference.queues.base import QueueFull
from inference.queues.local import LocalJobQueue
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.inference.crashy_worker import crashy_worker_main
from tests.inference.redis_backends import BACKENDS, Backend, started_backend
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SMALL = {"width": 256, "height": 256}


async def collect(queue: LocalJobQueue, job_id: str) -> list[JobEvent]:
    return [event async for event in queue.events(job_id)]


def final(events: list[JobEvent]) -> JobEvent:
    assert isinstance(events[-1], JobResult | JobFailed)
    return events[-1]


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tiny_config: WorkerConfig, redis_server: RedisServer
                  ) -> AsyncIterator[Backend]:  # fmt: skip
    """An 8-lane backend shared by the tests that leave it as they found it."""
    async with started_backend(request.param, tiny_config, redis_url=redis_server.url, max_length=50) as backend:
        yield backend


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=BACKENDS)
async def one_lane(request: pytest.FixtureRequest, tiny_config: WorkerConfig, redis_server: RedisServer
                   ) -> AsyncIterator[Backend]:  # fmt: skip
    """One lane (one job at a time) and room for six waiting jobs."""
    config = dataclasses.replace(tiny_config, max_batch_lanes=1)
    async with started_backend(request.param, config, redis_url=redis_server.url, max_length=6) as backend:
        yield backend


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=BACKENDS)
async def crashy(request: pytest.FixtureRequest, tiny_config: WorkerConfig, redis_server: RedisServer
                 ) -> AsyncIterator[Backend]:  # fmt: skip
    """A worker that dies on CRASH and hangs on HANG; its supervisor gives up on silence after 5 s."""
    async with started_backend(request.param, tiny_config, redis_url=redis_server.url, hang_seconds=5,
                               worker_target=crashy_worker_main) as backend:  # fmt: skip
        yield backend


async def test_a_job_reports_start_progress_and_its_result(backend: Backend) -> None:
    queue = backend.queue
    events = await collect(queue, queue.submit(GenerateRequest("a fox", steps=3, seed=1, **SMALL), user_id="u"))
    result = final(events)
    assert isinstance(result, JobResult), result
    assert Image.open(io.BytesIO(result.images[0].png)).size == (256, 256)
    assert [e.attempt for e in events if isinstance(e, JobStarted)] == [1]
    progress = [e for e in events if isinstance(e, JobProgress)]
    assert progress and progress[-1].job_step == progress[-1].job_total == 3
    assert result.is_test_model and result.model == "tiny"


async def test_compare_steps_returns_one_image_per_step_count(backend: Backend) -> None:
    queue = backend.queue
    request = CompareStepsRequest("a boat", steps=(2, 4, 6), scheduler="DPM++ 2M", seed=3, **SMALL)
    events = await collect(queue, queue.submit(request, user_id="u"))
    result = final(events)
    assert isinstance(result, JobResult)
    assert [image.steps for image in result.images] == [2, 4, 6]
    assert {image.seed for image in result.images} == {3}
    progress = [e for e in events if isinstance(e, JobProgress)]
    assert progress[-1].job_step == progress[-1].job_total == 12


async def test_a_result_of_more_than_2_mb_arrives_whole(backend: Backend) -> None:
    queue = backend.queue
    request = GenerateRequest("noise", steps=2, count=4, width=768, height=768, seed=5)
    result = final(await collect(queue, queue.submit(request, user_id="big")))
    assert isinstance(result, JobResult)
    assert sum(len(image.png) for image in result.images) > 2_000_000
    for image in result.images:
        assert Image.open(io.BytesIO(image.png)).size == (768, 768)


async def test_cancel_a_queued_and_a_running_job(backend: Backend) -> None:
    queue = backend.queue
    running = queue.submit(GenerateRequest("long", steps=150, **SMALL), user_id="a")
    waiting = [queue.submit(GenerateRequest("wait", steps=150, count=4, **SMALL), user_id="b") for _ in range(3)]
    queued = waiting[-1]
    assert queue.position(queued) is not None
    assert queue.cancel(queued)
    assert not queue.cancel(queued)
    events = queue.events(running)
    async for event in events:
        if isinstance(event, JobProgress):
            assert queue.cancel(running)
            break
    rest = [event async for event in events]
    assert isinstance(rest[-1], JobFailed) and rest[-1].cancelled
    queued_events = await collect(queue, queued)
    assert isinstance(queued_events[-1], JobFailed) and queued_events[-1].cancelled
    assert not any(isinstance(e, JobStarted) for e in queued_events)
    for job_id in waiting[:-1]:
        queue.cancel(job_id)
        last = final(await collect(queue, job_id))
        assert isinstance(last, JobFailed) and last.cancelled


async def test_a_full_queue_is_refused_without_queueing(one_lane: Backend) -> None:
    queue = one_lane.queue
    blocker = queue.submit(GenerateRequest("blocker", steps=150, **SMALL), user_id="a")
    waiting = [queue.submit(GenerateRequest(f"w{i}", steps=2, **SMALL), user_id=f"u{i}") for i in range(6)]
    with pytest.raises(QueueFull, match=r"queue is full \(6 of 6 jobs waiting\)"):
        queue.submit(GenerateRequest("one too many", steps=2, **SMALL), user_id="late")
    for job_id in [*waiting, blocker]:
        assert queue.cancel(job_id)
        assert isinstance(final(await collect(queue, job_id)), JobFailed)


async def test_members_are_served_round_robin(one_lane: Backend) -> None:
    queue = one_lane.queue
    started: list[str] = []

    async def follow(user: str, job_id: str) -> None:
        async for event in queue.events(job_id):
            if isinstance(event, JobStarted):
                started.append(user)

    jobs = [("blocker", queue.submit(GenerateRequest("b", steps=20, **SMALL), user_id="blocker"))]
    jobs += [("heavy", queue.submit(GenerateRequest(f"h{i}", steps=2, **SMALL), user_id="heavy")) for i in range(4)]
    jobs.append(("light", queue.submit(GenerateRequest("l", steps=2, **SMALL), user_id="light")))
    assert queue.position(jobs[-1][1]) == 2, "the light member's only job goes right after heavy's first"
    await asyncio.gather(*(follow(user, job_id) for user, job_id in jobs))
    assert started == ["blocker", "heavy", "light", "heavy", "heavy", "heavy"]


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_answered(crashy: Backend) -> None:
    queue = crashy.queue
    job_id = queue.submit(GenerateRequest("a long fox", steps=60, seed=7, **SMALL), user_id="u")
    events: list[JobEvent] = []
    async for event in queue.events(job_id):
        events.append(event)
        if isinstance(event, JobProgress) and len([e for e in events if isinstance(e, JobProgress)]) == 1:
            pid = crashy.worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
    assert isinstance(final(events), JobResult), final(events)
    assert [e.attempt for e in events if isinstance(e, JobStarted)][-1] == 2


async def test_a_hung_worker_is_killed_and_the_job_answered(crashy: Backend) -> None:
    queue = crashy.queue
    events = await collect(queue, queue.submit(GenerateRequest("HANG forever", steps=3, **SMALL), user_id="a"))
    failure = final(events)
    assert isinstance(failure, JobFailed) and not failure.cancelled
    assert "times while running this job" in failure.message
    if crashy.kind == "local":  # its supervisor killed and restarted the worker for each of the job's two attempts
        assert "crashed 2 times while running this job" in failure.message
    healthy = final(await collect(queue, queue.submit(GenerateRequest("fox", steps=2, **SMALL), user_id="a")))
    assert isinstance(healthy, JobResult)
