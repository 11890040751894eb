"""Both JobQueue backends behind one helper, so one contract suite runs against each.

"local": the LocalJobQueue and its spawned worker. "redis": a RedisJobQueue (the bot's side) and a
RedisAgent (the GPU side, with the same supervisor and spawned worker) in this process, talking
through a real redis-server; the timings are shrunk so that a reclaim takes about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from inference.protocol import JobEvent, WorkerConfig
from inference.queues.agent import AgentTimings, RedisAgent
from inference.queues.local import LocalJobQueue
from inference.queues.redis import RedisJobQueue
from inference.queues.wire import Keys
from inference.worker import worker_main
from tests.redis_server import fresh_keys

FAST = AgentTimings(heartbeat_seconds=0.5, claim_refresh_seconds=0.3, min_idle_seconds=1.0, tick_seconds=0.1)
BACKENDS = ("local", "redis")


@dataclass
class Backend:
    kind: str
    queue: LocalJobQueue
    agents: list[RedisAgent] = field(default_factory=list)
    keys: Keys | None = None

    @property
    def worker_pid(self) -> int | None:
        """The pid of the spawned worker running jobs (the first agent's, with Redis)."""
        return self.agents[0].local.worker_pid if self.agents else self.queue.worker_pid


@contextlib.asynccontextmanager
async def started_agent(
    url: str,
    config: WorkerConfig,
    keys: Keys,
    *,
    hang_seconds: float = 60.0,
    worker_target: Callable[[Connection, WorkerConfig], None] = worker_main,
    name: str | None = None,
) -> AsyncIterator[RedisAgent]:
    """An agent serving in this process until the block ends."""
    agent = RedisAgent(url, config, agent_id=name, keys=keys, timings=FAST, hang_seconds=hang_seconds,
                       worker_target=worker_target)  # fmt: skip
    await agent.start()
    serving = asyncio.create_task(agent.serve())
    try:
        yield agent
    finally:
        await agent.stop()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving


def redis_queue(config: WorkerConfig, url: str, keys: Keys, *, max_length: int = 100) -> RedisJobQueue:
    return RedisJobQueue(config, url, max_length=max_length, keys=keys, poll_seconds=0.2)


@contextlib.asynccontextmanager
async def started_backend(
    kind: str,
    config: WorkerConfig,
    *,
    redis_url: str,
    max_length: int = 100,
    hang_seconds: float = 60.0,
    worker_target: Callable[[Connection, WorkerConfig], None] = worker_main,
) -> AsyncIterator[Backend]:
    """A started, ready backend of `kind`; closed (workers and agents stopped) when the block ends."""
    if kind == "local":
        queue = LocalJobQueue(config, max_length=max_length, hang_seconds=hang_seconds, worker_target=worker_target)
        await queue.start()
        try:
            await queue.wait_ready()
            yield Backend(kind, queue)
        finally:
            await queue.close()
        return
    keys = fresh_keys()
    async with started_agent(redis_url, config, keys, hang_seconds=hang_seconds, worker_target=worker_target) as agent:
        bot = redis_queue(config, redis_url, keys, max_length=max_length)
        await bot.start()
        try:
            await bot.wait_ready()
            yield Backend(kind, bot, [agent], keys)
        finally:
            await bot.close()


async def collect(queue: RedisJobQueue, job_id: str) -> list[JobEvent]:
    return [event async for event in queue.events(job_id)]


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str, seconds: float = 120.0) -> None:
    """Poll `condition` until true; fail naming `what` after `seconds` (a hang guard, not a timing)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


async def started_bot(config: WorkerConfig, url: str, keys: Keys) -> RedisJobQueue:
    bot = redis_queue(config, url, keys)
    await bot.start()
    await bot.wait_ready()
    return bot
