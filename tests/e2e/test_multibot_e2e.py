"""Two `stepgrid run` bot processes, four shards between them, on one Redis and one PostgreSQL ledger, with two
`stepgrid worker` agents: what issue #26 calls a big bot, end to end.

Bot A runs shards 0-1 and bot B shards 2-3 (each its own STEPGRID_BOT_ID); the fake Discord speaks the shard
handshake and sends each server's interactions to the connection of its shard. A server on every shard sends
/imagine: each agent runs one slow job (A's, B's), frozen there (SIGSTOP on the agents' workers) so that nothing
finishes while the bots die, and one job of each bot waits behind them. Bot A is killed with -9 once its waiting job
is recorded and queued (the ledger is written after the defer). B notices A's lease
running out and takes A's unfinished jobs over (once), though their servers are on A's shards. B is then killed
too, every job unfinished, and restarted at once: it takes its own lease back and answers every job its id holds,
A's servers' included, on their interactions (over REST: a webhook needs no gateway connection). A, restarted,
finds nothing of its own left and answers a new command from one of its servers. Every interaction gets exactly
one result, every job is recorded once. All real processes (redis-server, PostgreSQL, the bots, the agents and
their workers) against the fake Discord; waits are on what the fake records, the ledger and the logs, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import sqlalchemy as sa

from bot.sharding import shard_of
from bot.storage.postgres import blocking_engine
from inference.queues.wire import Keys
from tests.e2e.bot_process import REPOSITORY, WORKER_READY, BotProcess, bot_env
from tests.e2e.helpers import is_result, result_files, wait_for_progress, wait_for_result
from tests.e2e.test_kill_e2e import SLOW_IMAGE
from tests.e2e.test_redis_e2e import start_agent, wait_ready_agents, wait_until
from tests.e2e.test_shards_e2e import guilds_on_every_shard
from tests.fake_discord import FakeDiscord, InteractionHandle, running_fake
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEYS = Keys()  # what `stepgrid` uses
COUNT = 4
SHARDS = {"bot-a": "0-1", "bot-b": "2-3"}
LEASE_SECONDS = "2"  # how long a dead bot keeps its id before the other takes its jobs over


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=240.0) as fake:  # a hang guard for CPU-bound workers, not a timing expectation
        yield fake


def ledger(url: str) -> dict[str, tuple[int | None, str, str]]:
    """job id -> (guild id, status, bot id) of every job in the ledger."""
    engine = blocking_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, guild_id, status, bot_id FROM jobs")).all()
    finally:
        engine.dispose()
    return {job_id: (guild_id, status, bot_id) for job_id, guild_id, status, bot_id in rows}


def results_per_interaction(fake: FakeDiscord, handles: list[InteractionHandle]) -> Counter[str]:
    """How many requests delivered a result image to each interaction (a double answer counts twice)."""
    tokens = {handle.token for handle in handles}
    return Counter(r.token for r in fake.requests if r.token in tokens and is_result(r))


async def serving(fake: FakeDiscord, bot: BotProcess, name: str) -> None:
    """Wait until a bot process has its agents and is connected on its shards (its recovery done: it runs first)."""
    await bot.wait_for_log(WORKER_READY, within=fake.timeout)
    await bot.wait_for_log(f"on shards {SHARDS[name]} of {COUNT}", within=fake.timeout)


def worker_pids(logs: list[Path]) -> list[int]:
    """The pids of the GPU workers the agents started (their logs name them)."""
    found = [re.search(r"started GPU worker pid (\d+)", log.read_text()) for log in logs]
    assert all(found), "an agent did not start its worker"
    return [int(match.group(1)) for match in found if match is not None]


@contextlib.contextmanager
def workers_paused(pids: list[int]) -> Iterator[None]:
    """Freeze the agents' workers (SIGSTOP): the jobs they run neither finish nor free a lane until the block ends.
    The agents go on (their heartbeats say they live), well within their hang limit (120 s)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# A hang guard: two bots, two agents, PostgreSQL, a takeover and two restarts on a shared 2-core machine.
@pytest.mark.timeout(900)
async def test_two_sharded_bot_processes_behind_redis_answer_every_job_once_when_one_is_killed_mid_job(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path, postgres_server: PostgresServer
) -> None:
    (g0, m0), (g1, m1), (g2, m2), (g3, m3) = guilds_on_every_shard(fake, COUNT)
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    database_url = postgres_server.create_database()
    client = aioredis.from_url(redis_server.url)
    base = bot_env(fake, tmp_path / "unused.sqlite3", model_cache_dir)
    base.pop("STEPGRID_DEV_GUILD_ID")  # global commands: every server has them
    base.update(STEPGRID_REDIS_URL=redis_server.url, STEPGRID_DATABASE_URL=database_url, PYTHONPATH=str(REPOSITORY))
    base.update(STEPGRID_BOT_LEASE_SECONDS=LEASE_SECONDS, STEPGRID_SHARD_COUNT=str(COUNT))
    agents: list[asyncio.subprocess.Process] = []
    agent_logs = [tmp_path / f"agent-{index}.log" for index in (1, 2)]
    bots: dict[str, BotProcess] = {}
    for name, ids in SHARDS.items():
        (tmp_path / name).mkdir()
        env = {**base, "STEPGRID_BOT_ID": name, "STEPGRID_SHARD_IDS": ids}
        env["STEPGRID_DATABASE_PATH"] = str(tmp_path / name / "stepgrid.sqlite3")  # its data folder (inputs)
        bots[name] = BotProcess(env, tmp_path / name / "bot.log")
    a, b = bots["bot-a"], bots["bot-b"]
    twin: BotProcess | None = None
    paused: contextlib.ExitStack = contextlib.ExitStack()
    try:
        # Everything starts at once; the second agent builds the tiny model (seeded: the same one) in a folder of
        # its own, so that the two never build into one folder together.
        agents.append(await start_agent(redis_server.url, "agent-1", base, agent_logs[0]))
        own_models = {**base, "STEPGRID_MODEL_CACHE_DIR": str(tmp_path / "agent-2-models")}
        agents.append(await start_agent(redis_server.url, "agent-2", own_models, agent_logs[1]))
        await asyncio.gather(a.start(), b.start())

        # A second process with a bot id in use (on a ledger of its own, so that no shard lock refuses it first)
        # is refused in one line by the id's lease on Redis.
        await a.wait_for_log("bot id 'bot-a' held on Redis", within=fake.timeout)
        (tmp_path / "twin").mkdir()
        twin_env = {**a.env, "STEPGRID_DATABASE_PATH": str(tmp_path / "twin" / "stepgrid.sqlite3")}
        del twin_env["STEPGRID_DATABASE_URL"]
        twin = BotProcess(twin_env, tmp_path / "twin" / "bot.log")
        await twin.start()

        await asyncio.gather(serving(fake, a, "bot-a"), serving(fake, b, "bot-b"))
        await wait_ready_agents(client, 2, fake.timeout)
        assert sorted(fake.live_shards()) == list(range(COUNT))
        assert [shard_of(guild.id, COUNT) for guild in (g0, g1, g2, g3)] == list(range(COUNT))
        assert await twin.exited() == 2
        assert any("runs as bot id 'bot-a'" in line for line in twin.lines), twin.lines[-3:]

        # Each agent runs one slow job (A's from shard 0, B's from shard 2), frozen mid-run; A's job from shard 1
        # and B's from shard 3 wait behind them.
        command, options = SLOW_IMAGE
        slow_a = await fake.invoke(command, {"prompt": "slow a", **options, "seed": 6}, guild=g0, user=m0)
        await wait_for_progress(slow_a, "step ")
        slow_b = await fake.invoke(command, {"prompt": "slow b", **options, "seed": 7}, guild=g2, user=m2)
        await wait_for_progress(slow_b, "step ")
        paused.enter_context(workers_paused(worker_pids(agent_logs)))
        small = {"steps": 3, "size": "256"}
        waiting_b = await fake.invoke("imagine", {"prompt": "a boat", **small, "seed": 5}, guild=g3, user=m3)
        waiting_a = await fake.invoke("imagine", {"prompt": "a fox", **small, "seed": 4}, guild=g1, user=m1)
        for handle in (waiting_b, waiting_a):
            # Accepted: acknowledged, then recorded and queued (the ledger comes after the defer), its place shown.
            await handle.wait_for(lambda r: r.is_edit and r.ok)

        await a.kill(signal.SIGKILL)  # the bot alone: the agents and their workers go on
        rows = await asyncio.to_thread(ledger, database_url)
        assert sorted((guild, status) for guild, status, _ in rows.values() if guild in (g0.id, g1.id)) == sorted(
            [(g0.id, "running"), (g1.id, "queued")]
        ), "one of A's jobs runs on an agent, the other waits, when A dies"

        # B takes A's jobs over once A's lease runs out, though their servers are on A's shards.
        await b.wait_for_log("answers its 2 unfinished job(s)", within=fake.timeout)

        # B dies too, every job unfinished, and comes back at once: it takes its own lease back, and every job of
        # its id is its own to answer, A's servers' included (their shards are not B's, but no other process
        # will answer them).
        await b.kill(signal.SIGKILL)
        rows = await asyncio.to_thread(ledger, database_url)
        assert {status for _, status, _ in rows.values()} <= {"queued", "running"} and len(rows) == 4, rows
        await b.start()
        await b.wait_for_log("bot id 'bot-b' held on Redis", within=fake.timeout)
        await a.start()  # A again, with its own id (B holds its lease: A takes nothing of B's)
        await serving(fake, b, "bot-b")
        recovered = {job for job in rows if any(f"job {job} re-queued after a restart" in line for line in b.lines)}
        assert recovered == set(rows), f"B's restart left {sorted(set(rows) - recovered)} unanswered"
        paused.close()

        # A finds nothing of its own left to recover, and serves a server on its shards.
        await serving(fake, a, "bot-a")
        assert not any("recovered" in line for line in a.lines), a.lines
        after = await fake.invoke("imagine", {"prompt": "a kite", **small, "seed": 8}, guild=g1, user=m1)

        handles = [slow_a, waiting_a, slow_b, waiting_b, after]
        for handle in handles:
            assert result_files(await wait_for_result(handle))

        # Every job recorded once, by the process that answered it; each result deleted once recorded.
        async def all_recorded() -> bool:
            statuses = [status for _, status, _ in (await asyncio.to_thread(ledger, database_url)).values()]
            return len(statuses) == len(handles) and set(statuses) == {"done"}

        await wait_until(all_recorded, "every job recorded as done", fake.timeout)
        owners = Counter(bot for _, _, bot in (await asyncio.to_thread(ledger, database_url)).values())
        assert owners == {"bot-b": 4, "bot-a": 1}, "A's two jobs moved to B; A's restart took the new one"

        async def no_results_left() -> bool:
            return not [key async for key in client.scan_iter(match=KEYS.result("*"))]

        await wait_until(no_results_left, "the bots deleting the results they recorded", fake.timeout)
        assert results_per_interaction(fake, handles) == {handle.token: 1 for handle in handles}, (
            "every interaction got exactly one result"
        )
    finally:
        paused.close()
        for bot in [*bots.values(), *([twin] if twin is not None else [])]:
            with contextlib.suppress(ProcessLookupError, AssertionError):
                await bot.kill(signal.SIGTERM)
        for process in agents:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGTERM)
                await process.wait()
        await client.aclose()
        redis_server.stop()
