"""LocalJobQueue with a real spawned worker running the tiny model: results, fairness, cancel,
and the supervisor's promise that a job accepted is a job answered, even across crashes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from inference.protocol import JobEvent, JobFailed, JobProgress, JobQueued, JobResult, JobStarted, WorkerConfig
from inference.queues.base import ModelsUnavailable, QueueFull, WorkerUnavailable
from inference.queues.local import LocalJobQueue
from inference.requests import FEW_STEP_SCHEDULERS, SCHEDULER_NAMES, GenerateRequest
from tests.inference.crashy_worker import crashy_worker_main, dying_worker_main, telling_worker_main
from tests.workers import started_queue

pytestmark = pytest.mark.slow

SMALL = {"width": 256, "height": 256}


async def collect(queue: LocalJobQueue, job_id: str) -> list[JobEvent]:
    return [event async for event in queue.events(job_id)]


async def drain(stream: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [event async for event in stream]


def final(events: list[JobEvent]) -> JobEvent:
    assert isinstance(events[-1], JobResult | JobFailed)
    return events[-1]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def queue(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    async with started_queue(LocalJobQueue(tiny_config, max_length=50, hang_seconds=60)) as queue:
        yield queue


@pytest.mark.asyncio(loop_scope="module")
async def test_every_scheduler_produces_an_image_in_the_worker(queue: LocalJobQueue) -> None:
    # Every scheduler the tiny SD model offers: all but LCM and TCD, which are for few-step distills.
    ids = {name: queue.submit(GenerateRequest("a fox", steps=3, scheduler=name, seed=1, **SMALL), user_id=name)
           for name in SCHEDULER_NAMES if name not in FEW_STEP_SCHEDULERS}  # fmt: skip
    results = await asyncio.gather(*(collect(queue, job_id) for job_id in ids.values()))
    for name, events in zip(ids, results, strict=True):
        result = final(events)
        assert isinstance(result, JobResult), f"{name}: {result}"
        image = Image.open(io.BytesIO(result.images[0].png))
        assert image.size == (256, 256), name
        assert result.is_test_model
        assert any(isinstance(e, JobProgress) for e in events), name


@pytest.mark.asyncio(loop_scope="module")
async def test_same_seed_same_bytes_and_batching_does_not_change_the_image(queue: LocalJobQueue) -> None:
    request = GenerateRequest("a castle", steps=5, scheduler="Euler a", seed=99, **SMALL)
    alone = final(await collect(queue, queue.submit(request, user_id="u")))
    again = final(await collect(queue, queue.submit(request, user_id="u")))
    assert isinstance(alone, JobResult) and isinstance(again, JobResult)
    assert alone.images[0].png == again.images[0].png

    batch = [queue.submit(GenerateRequest("noise", steps=7, seed=i, **SMALL), user_id="x") for i in range(3)]
    batched_id = queue.submit(request, user_id="u")
    batched, *_ = await asyncio.gather(collect(queue, batched_id), *(collect(queue, j) for j in batch))
    result = final(batched)
    assert isinstance(result, JobResult)
    assert np.abs(pixels(result.images[0].png) - pixels(alone.images[0].png)).max() <= 1


@pytest.mark.asyncio(loop_scope="module")
async def test_a_full_queue_is_refused_without_queueing(queue: LocalJobQueue) -> None:
    # Requests are validated once, by whoever builds them (bot.job_requests.checked), not here.
    small = LocalJobQueue(queue.config, max_length=1)  # never started: nothing leaves its queue
    small.submit(GenerateRequest("fox"), user_id="u")
    with pytest.raises(QueueFull, match=r"queue is full \(1 of 1 jobs waiting\)"):
        small.submit(GenerateRequest("fox"), user_id="v")


@pytest.mark.asyncio
async def test_queue_positions_are_reported_while_waiting(tiny_config: WorkerConfig) -> None:
    queue = LocalJobQueue(dataclasses.replace(tiny_config, max_batch_lanes=1))
    first = queue.submit(GenerateRequest("a", steps=2, **SMALL), user_id="a")
    second = queue.submit(GenerateRequest("b", steps=2, **SMALL), user_id="b")
    await queue.start()
    try:
        _, events = await asyncio.gather(collect(queue, first), collect(queue, second))
    finally:
        await queue.close()
    positions = [e.position for e in events if isinstance(e, JobQueued)]
    assert positions == [2, 1]
    assert isinstance(events[-1], JobResult) and events[-1].queue_seconds > 0


@pytest.mark.asyncio
async def test_a_worker_killed_mid_job_is_restarted_and_no_job_is_lost(
    tiny_config: WorkerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async with started_queue(LocalJobQueue(tiny_config)) as queue:
        ids = [queue.submit(GenerateRequest(f"job {i}", steps=40, seed=i, **SMALL), user_id=str(i)) for i in range(3)]
        streams = [queue.events(job_id) for job_id in ids]
        async for event in streams[0]:
            if isinstance(event, JobProgress):
                pid = queue.worker_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                break
        outcomes = await asyncio.gather(*(drain(stream) for stream in streams))
        # The log says what happened and where to look, not only "exited".
        assert f"GPU worker pid {pid} was killed by SIGKILL (the kernel's out-of-memory killer" in caplog.text
        [worker] = queue.workers()  # what the status page shows
        assert (worker.state, worker.restarts, worker.models) == ("ready", 1, ("tiny",))
        assert (
            worker.name == f"local worker pid {queue.worker_pid}"
            and worker.device == "cpu"
            and worker.detail.startswith("float32, loaded in")
        )
    assert queue.restarts == 1
    for events in outcomes:
        assert isinstance(events[-1], JobResult), events[-1]
        assert [e.attempt for e in events if isinstance(e, JobStarted)][-1] == 2


@pytest.mark.asyncio
async def test_a_job_that_kills_the_worker_every_time_fails_clearly_after_two_attempts(
    tiny_config: WorkerConfig,
) -> None:
    async with started_queue(LocalJobQueue(tiny_config, worker_target=crashy_worker_main)) as queue:
        innocent = queue.submit(GenerateRequest("a fox", steps=3, **SMALL), user_id="a")
        killer = queue.submit(GenerateRequest("CRASH please", steps=3, **SMALL), user_id="b")
        after = queue.submit(GenerateRequest("a cat", steps=3, **SMALL), user_id="c")
        innocent_events, killer_events, after_events = await asyncio.gather(
            collect(queue, innocent), collect(queue, killer), collect(queue, after)
        )
    failure = final(killer_events)
    assert isinstance(failure, JobFailed) and not failure.cancelled
    assert "crashed 2 times" in failure.message
    assert [e.attempt for e in killer_events if isinstance(e, JobStarted)] == [1, 2]
    assert isinstance(final(innocent_events), JobResult)
    assert isinstance(final(after_events), JobResult)


@pytest.mark.asyncio
async def test_out_of_memory_fails_the_batch_retries_each_job_alone_and_the_worker_lives(
    tiny_config: WorkerConfig,
) -> None:
    async with started_queue(LocalJobQueue(tiny_config, worker_target=crashy_worker_main)) as queue:
        greedy = queue.submit(GenerateRequest("OOM huge", steps=3, **SMALL), user_id="a")
        neighbour = queue.submit(GenerateRequest("a fox", steps=3, **SMALL), user_id="b")
        greedy_events, neighbour_events = await asyncio.gather(collect(queue, greedy), collect(queue, neighbour))
    failure = final(greedy_events)
    assert isinstance(failure, JobFailed) and "ran out of memory" in failure.message and failure.retryable
    assert [e.attempt for e in greedy_events if isinstance(e, JobStarted)] == [1, 2]
    assert isinstance(final(neighbour_events), JobResult)
    assert queue.restarts == 0


@pytest.mark.asyncio
async def test_a_model_that_cannot_load_is_reported_once_and_not_restarted(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "no-such-model")
    queue = LocalJobQueue(WorkerConfig(model=missing, cache_dir=str(tmp_path)))
    job_id = queue.submit(GenerateRequest("fox", **SMALL), user_id="u")
    await queue.start()
    try:
        with pytest.raises(ModelsUnavailable, match=r"Could not load model .*no-such-model"):
            await queue.wait_ready()  # the model's fault, which the CLI tells apart from a crash
        events = await collect(queue, job_id)
        with pytest.raises(WorkerUnavailable):
            queue.submit(GenerateRequest("fox", **SMALL), user_id="u")
    finally:
        await queue.close()
    assert isinstance(events[-1], JobFailed) and "STEPGRID_MODEL" in events[-1].message
    assert queue.restarts == 0


@pytest.mark.asyncio
async def test_a_worker_that_keeps_dying_while_loading_is_given_up_with_a_clear_message(
    tiny_config: WorkerConfig,
) -> None:
    queue = LocalJobQueue(tiny_config, worker_target=dying_worker_main)
    job_id = queue.submit(GenerateRequest("fox", **SMALL), user_id="u")
    await queue.start()
    try:
        with pytest.raises(WorkerUnavailable, match="exited 3 times while loading the model") as gave_up:
            await queue.wait_ready()
        assert not isinstance(gave_up.value, ModelsUnavailable)  # a crash: not the model's fault as far as we know
        events = await collect(queue, job_id)
    finally:
        await queue.close()
    assert isinstance(events[-1], JobFailed) and "exited 3 times" in events[-1].message
    assert queue.restarts == 2
    [worker] = queue.workers()
    assert worker.state == "failed" and "exited 3 times" in worker.detail


@pytest.mark.asyncio
async def test_each_worker_is_forked_from_one_server_that_imported_torch_and_runs_with_the_bots_environment(
    tiny_config: WorkerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The libraries are imported once, by the fork server; yet each worker starts with the environment and
    folder the bot had when it started that worker (as a spawned one would), and Ctrl-C left to the bot."""
    told = []
    for start in ("first", "second"):
        folder = tmp_path / start
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("STEPGRID_TEST_PROBE", start)
        queue = LocalJobQueue(tiny_config, worker_target=telling_worker_main)
        await queue.start()
        try:
            with pytest.raises(ModelsUnavailable) as said:
                await queue.wait_ready()
        finally:
            await queue.close()
        told.append(json.loads(str(said.value)))
    assert [(t["probe"], Path(t["cwd"])) for t in told] == [(s, (tmp_path / s).resolve()) for s in ("first", "second")]
    assert all(t["sigint_ignored"] and t["torch_imported"] for t in told), told
    assert told[0]["parent"] == told[1]["parent"] != os.getpid(), "both forked by the same server"
