"""The real `stepgrid run` against the fake Discord, with two `stepgrid worker` agents behind Redis.

/imagine and /compare-steps are answered through Redis, and a job whose agent is killed with -9
mid-run is still answered (the other agent takes it over). Everything runs as real processes: a
redis-server, the bot, two agents each with its spawned worker. Waits are on what the fake records,
the bot's log and Redis, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from inference.queues.redis import read_agents
from inference.queues.wire import GROUP, Keys
from tests.e2e.bot_process import REPOSITORY, STEPGRID, WORKER_READY, BotProcess, bot_env
from tests.e2e.helpers import result_files, wait_for_progress, wait_for_result
from tests.e2e.test_kill_e2e import SLOW_IMAGE
from tests.fake_discord import FakeDiscord
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEYS = Keys()  # what `stepgrid` uses


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(timeout=240.0)  # a hang guard for CPU-bound workers, not a timing expectation
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    fake.assert_no_unknown_routes()


async def start_agent(url: str, name: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    command = [str(STEPGRID)] if STEPGRID.exists() else [sys.executable, "-m", "bot.cli.main"]
    return await asyncio.create_subprocess_exec(
        *command, "worker", "--redis", url, "--models", "tiny", "--lanes", "1", "--name", name,
        "--heartbeat", "0.5", "--reclaim-after", "1",
        env=env, cwd=log.parent, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )  # fmt: skip


async def wait_ready_agents(client: aioredis.Redis, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while sum(agent.state == "ready" for agent in await read_agents(client, KEYS)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} agents became ready"
        await asyncio.sleep(0.1)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.1)


# A hang guard above the default 300 s: two agents, a bot, a takeover and the gone agent's heartbeat
# expiring take 6 minutes on a shared 2-core machine (378 s measured, building the tiny model included).
@pytest.mark.timeout(900)
async def test_two_agents_behind_redis_answer_commands_survive_losing_one_mid_job_and_leave_nothing_behind(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    env = {**bot_env(fake, tmp_path / "stepgrid.sqlite3", model_cache_dir), "STEPGRID_REDIS_URL": server.url}
    env["PYTHONPATH"] = str(REPOSITORY)
    client = aioredis.from_url(server.url)
    agents: dict[str, asyncio.subprocess.Process] = {}
    bot = BotProcess(env, tmp_path / "bot.log")
    try:
        for name in ("agent-1", "agent-2"):  # one after the other: the first builds the tiny model
            agents[name] = await start_agent(server.url, name, env, tmp_path / f"{name}.log")
            await wait_ready_agents(client, len(agents), fake.timeout)
        await bot.start()
        await bot.wait_for_log(WORKER_READY, within=fake.timeout)

        imagine = await fake.invoke("imagine", {"prompt": "a fox", "steps": 3, "size": "256", "seed": 4},
                                    user=fake.member)  # fmt: skip
        grid = await fake.invoke("compare-steps", {"prompt": "a boat", "steps": "2,3", "size": "256", "seed": 5},
                                 user=fake.admin)  # fmt: skip
        assert result_files(await wait_for_result(imagine))
        assert result_files(await wait_for_result(grid))

        command, options = SLOW_IMAGE
        slow = await fake.invoke(command, {"prompt": "slow", **options, "seed": 6}, user=fake.member)
        await wait_for_progress(slow, "step ")
        holders = {entry["consumer"].decode() for entry in
                   await client.xpending_range(KEYS.jobs("tiny"), GROUP, "-", "+", 10)}  # fmt: skip
        assert len(holders) == 1
        victim = agents[holders.pop()]
        os.killpg(victim.pid, signal.SIGKILL)  # the agent and its worker, as a host that vanished
        await victim.wait()
        assert result_files(await wait_for_result(slow)), "the other agent finished the job"

        # Nothing piles up in Redis: each result goes once the bot has recorded it, the killed agent's
        # consumer goes once the survivor's janitor has taken its job over, the survivor's as it exits.
        async def no_results_left() -> bool:
            return not [key async for key in client.scan_iter(match=KEYS.result("*"))]

        await wait_until(no_results_left, "the bot deleting the results it recorded", fake.timeout)
        survivor = next(name for name, process in agents.items() if process is not victim)

        async def consumers() -> set[str]:
            return {c["name"].decode() for c in await client.xinfo_consumers(KEYS.jobs("tiny"), GROUP)}

        async def only_the_survivor_left() -> bool:
            return await consumers() == {survivor}

        await wait_until(only_the_survivor_left, "the janitor deleting the killed agent's consumer", fake.timeout)
        os.killpg(agents[survivor].pid, signal.SIGTERM)
        assert await agents[survivor].wait() == 0
        assert await consumers() == set(), "a clean exit deletes its own consumer"
    finally:
        with contextlib.suppress(ProcessLookupError, AssertionError):
            await bot.kill(signal.SIGTERM)
        for process in agents.values():
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGTERM)
                await process.wait()
        await client.aclose()
        server.stop()
