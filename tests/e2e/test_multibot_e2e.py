"""Two `stepgrid run` bot processes on one Redis and one PostgreSQL ledger, two `stepgrid worker` agents.

Bot A is killed with -9 while one of its jobs runs on an agent and another waits: bot B notices A's
lease running out, takes A's unfinished jobs over (once) and answers them on A's interactions; A,
restarted with its own id, finds nothing left of its own and answers new commands. Every
interaction gets exactly one result. All real processes (redis-server, PostgreSQL, the bots, the
agents and their workers) against the fake Discord; waits are on what the fake records and the
logs, never on sleeps.

Both bot processes are one Discord application (one token), as a deployment's processes are; the
fake has no shards yet, so the test picks which gateway connection an interaction goes to
(`TwoBotDiscord.target`). Once the bot runs shards, each process gets its own shard range here
(`EXTRA_ENV`) and the fake routes by guild.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import sqlalchemy as sa

from bot.storage.postgres import blocking_engine
from inference.queues.wire import Keys
from tests.e2e.bot_process import REPOSITORY, WORKER_READY, BotProcess, bot_env
from tests.e2e.helpers import is_result, result_files, wait_for_progress, wait_for_result
from tests.e2e.test_kill_e2e import SLOW_IMAGE
from tests.e2e.test_redis_e2e import start_agent, wait_ready_agents, wait_until
from tests.fake_discord import FakeDiscord, GatewayConnection, InteractionHandle
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEYS = Keys()  # what `stepgrid` uses
LEASE_SECONDS = "2"  # how long a dead bot keeps its id before the other takes its jobs over
# Per bot process, beside its id: where the lead adds STEPGRID_SHARD_COUNT / STEPGRID_SHARD_IDS once there are shards.
EXTRA_ENV: dict[str, dict[str, str]] = {"bot-a": {}, "bot-b": {}}


class TwoBotDiscord(FakeDiscord):
    """The fake Discord, sending interactions to the gateway connection the test names (else the newest)."""

    target: GatewayConnection | None = None

    def _live_connection(self) -> GatewayConnection | None:
        if self.target is not None and self.target.session_id is not None and not self.target.ws.closed:
            return self.target
        return super()._live_connection()

    def _shard_connection(self, guild_id: int | None) -> GatewayConnection | None:
        # Both processes run shard 0 of 1 (an AutoShardedBot identifies with its shard even unsharded).
        return self._live_connection()


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[TwoBotDiscord]:
    fake = TwoBotDiscord(timeout=240.0)  # a hang guard for CPU-bound workers, not a timing expectation
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    fake.assert_no_unknown_routes()


async def start_bot(fake: TwoBotDiscord, bot: BotProcess) -> GatewayConnection:
    """Start a bot process and wait for it to serve; its gateway connection."""
    before = set(map(id, fake.connections))
    await bot.start()
    await bot.wait_for_log(WORKER_READY, within=fake.timeout)
    fake.target = None
    await bot.wait_for_log("connected as", within=fake.timeout)
    return next(c for c in reversed(fake.connections) if id(c) not in before and c.session_id is not None)


def results_per_interaction(fake: FakeDiscord, handles: list[InteractionHandle]) -> Counter[str]:
    """How many requests delivered a result image to each interaction (a double answer counts twice)."""
    tokens = {handle.token for handle in handles}
    return Counter(r.token for r in fake.requests if r.token in tokens and is_result(r))


# A hang guard: two bots, two agents, PostgreSQL, a takeover and a restart on a shared 2-core machine.
@pytest.mark.timeout(900)
async def test_two_bot_processes_on_one_redis_answer_every_job_once_when_one_is_killed_mid_job(
    fake: TwoBotDiscord, tmp_path: Path, model_cache_dir: Path, postgres_server: PostgresServer
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    database_url = postgres_server.create_database()
    client = aioredis.from_url(redis_server.url)
    base = bot_env(fake, tmp_path / "unused.sqlite3", model_cache_dir)
    base.update(STEPGRID_REDIS_URL=redis_server.url, STEPGRID_DATABASE_URL=database_url, PYTHONPATH=str(REPOSITORY))
    base["STEPGRID_BOT_LEASE_SECONDS"] = LEASE_SECONDS
    agents: list[asyncio.subprocess.Process] = []
    bots: dict[str, BotProcess] = {}
    for name in ("bot-a", "bot-b"):
        env = {**base, "STEPGRID_BOT_ID": name, **EXTRA_ENV[name]}
        (tmp_path / name).mkdir()
        env["STEPGRID_DATABASE_PATH"] = str(tmp_path / name / "stepgrid.sqlite3")  # its data folder (inputs)
        bots[name] = BotProcess(env, tmp_path / name / "bot.log")
    try:
        for index in (1, 2):  # one after the other: the first builds the tiny model
            agents.append(await start_agent(redis_server.url, f"agent-{index}", base, tmp_path / f"agent-{index}.log"))
            await wait_ready_agents(client, len(agents), fake.timeout)
        connections = {name: await start_bot(fake, bot) for name, bot in bots.items()}

        # A second process with a bot id that is in use is refused in one line.
        twin = BotProcess({**bots["bot-a"].env}, tmp_path / "twin.log")
        await twin.start()
        assert await twin.exited() == 2
        assert any("runs as" in line and "bot-a" in line for line in twin.lines), twin.lines[-3:]

        # Bot A: a long job that runs on an agent, and one behind it; bot B: a job of its own.
        command, options = SLOW_IMAGE
        fake.target = connections["bot-a"]
        slow = await fake.invoke(command, {"prompt": "slow", **options, "seed": 6}, user=fake.member)
        waiting = await fake.invoke("imagine", {"prompt": "a fox", "steps": 3, "size": "256", "seed": 4},
                                    user=fake.admin)  # fmt: skip
        fake.target = connections["bot-b"]
        own = await fake.invoke("imagine", {"prompt": "a boat", "steps": 3, "size": "256", "seed": 5},
                                user=fake.member)  # fmt: skip
        await wait_for_progress(slow, "step ")
        # Accepted by bot A before it dies: acknowledged, recorded, queued, its message first edited.
        await waiting.wait_for(lambda r: r.is_edit and r.ok)

        await bots["bot-a"].kill(signal.SIGKILL)  # the bot alone: the agents and their workers go on
        await bots["bot-b"].wait_for_log("answers its 2 unfinished job(s)", within=fake.timeout)
        for handle in (slow, waiting, own):
            assert result_files(await wait_for_result(handle))

        # Bot A again, with its own id: nothing of its own left to recover, and it serves new commands.
        bots["bot-a"].lines.clear()
        connections["bot-a"] = await start_bot(fake, bots["bot-a"])
        assert not any("recovered" in line for line in bots["bot-a"].lines)
        fake.target = connections["bot-a"]
        after = await fake.invoke("imagine", {"prompt": "a kite", "steps": 3, "size": "256", "seed": 7},
                                  user=fake.member)  # fmt: skip
        assert result_files(await wait_for_result(after))

        # Every job recorded once, by the process that answered it; each result deleted once recorded.
        engine = blocking_engine(database_url)
        try:

            async def all_recorded() -> bool:
                with engine.connect() as connection:
                    statuses = connection.execute(sa.text("SELECT status FROM jobs")).scalars().all()
                return len(statuses) == 4 and set(statuses) == {"done"}

            await wait_until(all_recorded, "every job recorded as done", fake.timeout)
            with engine.connect() as connection:
                owners = Counter(connection.execute(sa.text("SELECT bot_id FROM jobs")).scalars())
        finally:
            engine.dispose()
        assert owners == {"bot-b": 3, "bot-a": 1}, "A's two jobs moved to B; A's restart took the new one"

        async def no_results_left() -> bool:
            return not [key async for key in client.scan_iter(match=KEYS.result("*"))]

        await wait_until(no_results_left, "the bots deleting the results they recorded", fake.timeout)
        assert results_per_interaction(fake, [slow, waiting, own, after]) == {
            handle.token: 1 for handle in (slow, waiting, own, after)
        }, "every interaction got exactly one result"
    finally:
        for bot in bots.values():
            with contextlib.suppress(ProcessLookupError, AssertionError):
                await bot.kill(signal.SIGTERM)
        for process in agents:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGTERM)
                await process.wait()
        await client.aclose()
        redis_server.stop()
