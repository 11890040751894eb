"""What the Redis agent (`stepgrid worker`) promises: a job that kills every worker is dead-lettered, a killed
agent's job is taken over by another, an entry it can't read is answered at once, and it cleans up after
itself and after agents that are gone.

Everything runs against real redis-server processes; agents to be killed with -9 run in processes
of their own. Waits poll for a condition with a deadline, never sleep for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference.protocol import JobEvent, JobFailed, JobProgress, JobResult, JobStarted, WorkerConfig
from inference.queues.wire import GROUP, UNREADABLE_JOB_MESSAGE, Keys, dumps, loads
from inference.requests import GenerateRequest
from tests.inference.crashy_worker import crashy_worker_main
from tests.inference.redis_backends import collect, redis_queue, started_agent, started_bot, until
from tests.redis_server import RedisServer, fresh_keys

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SMALL = {"width": 256, "height": 256}
REPOSITORY = Path(__file__).resolve().parents[3]


async def test_a_job_that_kills_every_worker_is_dead_lettered_after_three_deliveries(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    url = redis_server.url
    async with (
        started_agent(url, tiny_config, keys, worker_target=crashy_worker_main, name="a") as first,
        started_agent(url, tiny_config, keys, worker_target=crashy_worker_main, name="b") as second,
    ):
        bot = await started_bot(tiny_config, url, keys)
        try:
            events = await collect(bot, bot.submit(GenerateRequest("CRASH please", steps=3, **SMALL), user_id="u"))
            failure = events[-1]
            assert isinstance(failure, JobFailed) and not failure.cancelled
            assert "stopped 3 times while running this job" in failure.message
            assert [e.attempt for e in events if isinstance(e, JobStarted)] == [1, 2, 3]
            client = aioredis.from_url(url)
            assert await client.xlen(keys.dead) == 1
            await client.aclose()
            assert first.dead_lettered + second.dead_lettered == 1
            healthy = await collect(bot, bot.submit(GenerateRequest("a fox", steps=2, **SMALL), user_id="u"))
            assert isinstance(healthy[-1], JobResult), "the agents stay up"
        finally:
            await bot.close()


async def _agent_process(url: str, keys: Keys, name: str, cache_dir: str, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.inference.agent_process", url, keys.prefix, name, cache_dir,
        cwd=REPOSITORY, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )  # fmt: skip


async def test_killing_one_of_two_agents_mid_job_lets_the_other_finish_it(
    tiny_config: WorkerConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = fresh_keys()
    url = redis_server.url
    assert tiny_config.cache_dir is not None
    agents = {name: await _agent_process(url, keys, name, tiny_config.cache_dir, tmp_path / f"{name}.log")
              for name in ("one", "two")}  # fmt: skip
    client = aioredis.from_url(url)
    bot = redis_queue(tiny_config, url, keys)
    await bot.start()
    try:
        await until(lambda: sum(a.state == "ready" for a in bot.agents) == 2, "both agents ready", 300)
        # What the status page lists: each agent, its state and its models.
        assert [(w.state, "tiny" in w.models, w.name.startswith("agent ")) for w in bot.workers()] == [
            ("ready", True, True)
        ] * 2
        job_id = bot.submit(GenerateRequest("a long fox", steps=80, seed=2, **SMALL), user_id="u")
        events: list[JobEvent] = []
        stream = bot.events(job_id)
        async for event in stream:
            events.append(event)
            if isinstance(event, JobProgress):
                break
        holders = {
            entry["consumer"].decode() for entry in await client.xpending_range(keys.jobs("tiny"), GROUP, "-", "+", 10)
        }
        assert len(holders) == 1
        victim = agents[holders.pop()]
        os.killpg(victim.pid, signal.SIGKILL)  # the agent and its worker, as a host that vanished
        await victim.wait()
        events += [event async for event in stream]
        assert isinstance(events[-1], JobResult), events[-1]
        # The first start's notice may be overtaken by its progress (a lost notice is harmless);
        # what must hold is that the job was delivered again and that run answered it.
        assert [e.attempt for e in events if isinstance(e, JobStarted)][-1] == 2
    finally:
        await bot.close()
        await client.aclose()
        for process in agents.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


def _newer_bots_request() -> bytes:
    """What a newer bot writes for a request type this agent does not have (a rolling upgrade)."""
    tree = json.dumps({"w": "UpscaleRequest", "f": {"prompt": "a fox", "factor": 2}}).encode()
    return struct.pack(">4sI", b"SGW1", len(tree)) + tree


async def test_an_entry_the_agent_cannot_read_is_dead_lettered_at_once_and_the_rest_of_its_batch_runs(
    tiny_config: WorkerConfig, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    stream = keys.jobs("tiny")
    await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    # Written before the agent starts, so that its first read takes all three in one batch.
    jobs = {"poison": _newer_bots_request()}
    jobs |= {f"fox-{i}": dumps(GenerateRequest(f"fox {i}", steps=2, seed=i, model="tiny", **SMALL)) for i in (1, 2)}
    entries = {
        job_id: (await client.xadd(stream, {"job": job_id, "bot": "b1", "user": "u", "request": request})).decode()
        for job_id, request in jobs.items()
    }
    try:
        async with started_agent(redis_server.url, tiny_config, keys) as agent:

            async def all_answered() -> bool:
                return bool(await client.exists(*(keys.result(job_id) for job_id in jobs)) == len(jobs))

            await until(all_answered, "an answer for every job of the batch, the unreadable one included")
            poison = loads(await client.get(keys.result("poison")))
            assert poison == JobFailed("poison", UNREADABLE_JOB_MESSAGE)
            assert "it runs an older Stepgrid than the bot" in UNREADABLE_JOB_MESSAGE
            for job_id in ("fox-1", "fox-2"):
                assert isinstance(loads(await client.get(keys.result(job_id))), JobResult)
            notices = [fields for _, fields in await client.xrange(keys.events("b1"))]
            started = sorted(f[b"job"] for f in notices if f[b"kind"] == b"started")
            assert started == [b"fox-1", b"fox-2"]
            assert all(f[b"attempt"] == b"1" for f in notices if f[b"kind"] == b"started"), "delivered once"
            assert {f[b"job"] for f in notices if f[b"kind"] == b"done"} == {b"poison", b"fox-1", b"fox-2"}
            [(_, dead)] = await client.xrange(keys.dead)
            assert dead[b"job"] == b"poison" and dead[b"reason"].startswith(b"unreadable: an unknown wire type")

            async def nothing_pending() -> bool:
                return int((await client.xpending(stream, GROUP))["pending"]) == 0

            await until(nothing_pending, "every entry acknowledged")
            await until(lambda: agent.jobs_done == 2, "the agent counting both real jobs")
            assert agent.dead_lettered == 1
        assert [r.getMessage() for r in caplog.records if "can't be read here" in r.getMessage()] == [
            f"job poison (entry {entries['poison']} in {stream}) can't be read here (an unknown wire type "
            "'UpscaleRequest'): this agent is older than the bot that queued it; upgrade it. "
            "Dead-lettered and answered as failed."
        ], "logged once"
        assert not [r for r in caplog.records if r.exc_info], "no traceback"
    finally:
        await client.aclose()


async def _consumers(client: aioredis.Redis, stream: str) -> set[str]:
    return {consumer["name"].decode() for consumer in await client.xinfo_consumers(stream, GROUP)}


async def test_an_agent_that_stops_cleanly_deletes_its_consumer(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    try:
        async with started_agent(redis_server.url, tiny_config, keys, name="leaving"):
            bot = await started_bot(tiny_config, redis_server.url, keys)
            try:
                assert isinstance((await collect(bot, bot.submit(GenerateRequest("fox", **SMALL), user_id="u")))[-1],
                                  JobResult)  # fmt: skip
            finally:
                await bot.close()
            assert await _consumers(client, keys.jobs("tiny")) == {"leaving"}
        assert await _consumers(client, keys.jobs("tiny")) == set()
    finally:
        await client.aclose()


async def test_the_janitor_deletes_consumers_of_gone_agents_that_hold_nothing(
    tiny_config: WorkerConfig, redis_server: RedisServer
) -> None:
    keys = fresh_keys()
    client = aioredis.from_url(redis_server.url)
    stream = keys.jobs("tiny")
    await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for name in ("gone-1", "gone-2", "alive-elsewhere"):
        await client.xgroup_createconsumer(stream, GROUP, name)
    await client.hset(keys.agent("alive-elsewhere"), mapping={"host": "h", "state": "loading"})
    try:
        async with started_agent(redis_server.url, tiny_config, keys, name="janitor"):

            async def ghosts_gone() -> bool:
                return not {"gone-1", "gone-2"} & await _consumers(client, stream)

            await until(ghosts_gone, "the janitor deleting the consumers of agents that are gone")
            assert "alive-elsewhere" in await _consumers(client, stream), "an agent with a heartbeat keeps its own"
    finally:
        await client.aclose()
