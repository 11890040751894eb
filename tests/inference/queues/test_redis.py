"""What only the Redis backend's bot side promises: Redis and the bot restart without losing a job, agents it
can't use, answers it can't read, results kept in Redis until recorded. The agent's own promises (dead letters,
take-overs, its consumers) are in test_agent.py.

Everything runs against real redis-server processes. Waits poll for a condition with a deadline, never sleep
for a fixed time.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference.protocol import JobEvent, JobFailed, JobProgress, JobResult, JobStarted, WorkerConfig
from inference.queues.base import QueuedJob
from inference.queues.redis import RedisJobQueue
from inference.queues.wire import (
    GROUP,
    UNREADABLE_RESULT_MESSAGE,
    dumps,
)
from inference.requests import GenerateRequest, InvalidRequest
from tests.inference.redis_backends import collect, redis_queue, started_agent, started_bot, until
from tests.redis_server import RedisServer, fresh_keys

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SMALL = {"width": 256, "height": 256}


async def drain(stream: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [event async for event in stream]


async def test_a_model_no_live_agent_serves_is_refused_with_a_clear_message(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    async with started_agent(redis_server.url, tiny_config, keys):
        bot = await started_bot(tiny_config, redis_server.url, keys)
        try:
            with pytest.raises(InvalidRequest, match=r"No GPU worker serves the model 'tiny-sdxl' right now.*tiny"):
                bot.submit(GenerateRequest("fox", model="tiny-sdxl", **SMALL), user_id="u")
            assert "tiny" in bot.models
        finally:
            await bot.close()


async def test_an_agent_serving_only_models_the_bot_does_not_know_is_shown_unusable_and_gets_no_job(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    # Started before the bot, so its own check of the bot's models had nothing to check against.
    heartbeat = {"host": "gpu-box", "device": "cuda:0", "state": "ready", "models": "tiny-sdxl", "infos": dumps(()),
                 "lanes": 4, "busy": 0, "done": 0, "at": time.time()}  # fmt: skip
    await client.hset(keys.agent("early"), mapping=heartbeat)
    bot = redis_queue(WorkerConfig(model="tiny"), redis_server.url, keys)
    await bot.start()
    try:
        await until(lambda: bool(bot.workers()), "the bot reading the agent's heartbeat")
        [agent] = bot.workers()
        assert agent.state == "unusable" and bot.models == {} and not bot.ready
        assert "serves tiny-sdxl, which this bot does not know (it knows tiny); restart it with --models" in (
            agent.detail
        )
        with pytest.raises(InvalidRequest, match=r"No GPU worker serves the model 'tiny' right now"):
            bot.submit(GenerateRequest("fox", **SMALL), user_id="u")  # not run on tiny-sdxl instead
        for _ in range(2):  # two more looks at the agents: the operator is told once, not at every look
            await bot._sweep_once()
        assert caplog.text.count("GPU agent early on gpu-box serves tiny-sdxl, which this bot does not know") == 1
    finally:
        await bot.close()
        await client.aclose()


async def test_redis_restarted_under_load_loses_no_job(tiny_config: WorkerConfig, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    keys = fresh_keys()
    try:
        async with started_agent(server.url, tiny_config, keys) as agent:
            bot = await started_bot(tiny_config, server.url, keys)
            try:
                ids = [bot.submit(GenerateRequest(f"job {i}", steps=25, seed=i, **SMALL), user_id=f"u{i % 3}")
                       for i in range(10)]  # fmt: skip
                streams = [bot.events(job_id) for job_id in ids]
                async for event in streams[0]:
                    if isinstance(event, JobProgress):
                        break
                server.stop(kill=True)
                await until(lambda: bot.connection_problem is not None, "the bot noticing Redis is gone")
                assert f"Redis at {server.url} is unreachable (" in (bot.connection_problem or "")
                server.start()  # the same port and append-only file
                outcomes = await asyncio.gather(*(drain(stream) for stream in streams))
                await until(lambda: bot.connection_problem is None, "the bot seeing Redis back (/readyz: ready)")
                for events in outcomes:
                    assert isinstance(events[-1], JobResult), events[-1]
                assert bot.reconnects >= 1
                client = aioredis.from_url(server.url)

                async def all_acknowledged() -> bool:  # the agent may still be storing its last ack
                    pending = await client.xpending(keys.jobs("tiny"), GROUP)
                    return int(pending["pending"]) == 0

                await until(all_acknowledged, "every job acknowledged")
                await client.aclose()
                await until(lambda: agent.jobs_done >= 10, "the agent counting every job it answered")
            finally:
                await bot.close()
    finally:
        server.stop()


async def test_a_restarted_bot_delivers_what_agents_finished_while_it_was_down(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    url = redis_server.url
    async with started_agent(url, tiny_config, keys) as agent:
        before = await started_bot(tiny_config, url, keys)
        ids = [f"job-{i}" for i in range(3)]
        requests = {job_id: GenerateRequest(job_id, steps=12, seed=i, **SMALL) for i, job_id in enumerate(ids)}
        for job_id, request in requests.items():
            before.submit(request, user_id="u", job_id=job_id)
        client = aioredis.from_url(url)

        async def all_released() -> bool:
            return bool(await client.exists(*(keys.released(job_id) for job_id in ids)) == 3)

        await until(all_released, "all three released")
        await before.close()  # the bot goes away; the agent goes on
        await until(lambda: agent.jobs_done == 3, "the agent finishing all three")
        after = redis_queue(tiny_config, url, keys)
        await after.start()
        try:
            # Start-up recovery submits the ledger's jobs again, before the bot has looked at the agents.
            for job_id, request in requests.items():
                after.submit(request, user_id="u", job_id=job_id)
            outcomes = await asyncio.gather(*(collect(after, job_id) for job_id in ids))
            for events in outcomes:
                assert isinstance(events[-1], JobResult), events[-1]
            assert agent.jobs_done == 3, "delivered from Redis, not run again"
        finally:
            await after.close()
            await client.aclose()


class _SlowToRecordRelease(RedisJobQueue):
    """A bot whose release only completes after the agent's first notice is in the events stream:
    the widest form of a race a fast agent wins now and then."""

    async def _release(self, client: aioredis.Redis, job: QueuedJob) -> None:
        await super()._release(client, job)

        async def agent_started() -> bool:
            entries = await client.xrange(self.keys.events(self.bot_id))
            return any(f[b"job"] == job.job_id.encode() and f[b"kind"] == b"started" for _, f in entries)

        await until(agent_started, "the agent's started notice")
        await asyncio.sleep(0.3)  # let the events reader take it while this release is still in flight


async def test_notices_that_overtake_the_release_reaching_the_bot_are_kept(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    async with started_agent(redis_server.url, tiny_config, keys):
        bot = _SlowToRecordRelease(tiny_config, redis_server.url, keys=keys, poll_seconds=0.2)
        await bot.start()
        try:
            await bot.wait_ready()
            job_id = bot.submit(GenerateRequest("fox", steps=3, **SMALL), user_id="u")
            events = await collect(bot, job_id)
            assert [e.attempt for e in events if isinstance(e, JobStarted)] == [1], events
            assert isinstance(events[-1], JobResult)
        finally:
            await bot.close()


async def test_the_bot_answers_a_result_it_cannot_read_as_a_failure_naming_the_version_mismatch(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    async with started_agent(redis_server.url, tiny_config, keys, name="real"):
        bot = await started_bot(tiny_config, redis_server.url, keys)
        try:
            # An answer already stored by an agent of another version (an old pickle), as a restarted bot finds it.
            await client.set(keys.result("old"), pickle.dumps(JobResult("old", (), 0.0)))
            events = await collect(bot, bot.submit(GenerateRequest("fox", **SMALL), user_id="u", job_id="old"))
            failure = events[-1]
            assert isinstance(failure, JobFailed) and failure.message == UNREADABLE_RESULT_MESSAGE
        finally:
            await bot.close()
            await client.aclose()


async def test_a_result_goes_from_redis_once_the_bot_has_recorded_it(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    async with started_agent(redis_server.url, tiny_config, keys):
        bot = await started_bot(tiny_config, redis_server.url, keys)
        try:
            job_id = bot.submit(GenerateRequest("fox", **SMALL), user_id="u")
            assert isinstance((await collect(bot, job_id))[-1], JobResult)
            assert await client.exists(keys.result(job_id)), "kept until recorded: a restarted bot would need it"
            bot.recorded(job_id)

            async def result_gone() -> bool:
                return not await client.exists(keys.result(job_id), keys.released(job_id))

            await until(result_gone, "the result deleted")
        finally:
            await bot.close()
            await client.aclose()
