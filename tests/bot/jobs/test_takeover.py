"""Taking over a dead bot process's jobs: several bot processes on one Redis and one ledger.

Each "process" here is what a bot process brings to the takeover: its own Redis connection and lease, its own
Database on the shared ledger (both backends, tests/bot/jobs/conftest.py), and a recording job service. Redis is the
tests' real redis-server; Discord and the job service are fakes. A bot dies by not renewing a short lease: its TTL
runs out on Redis, which the test polls for. The live processes hold theirs for 30 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import discord
import pytest
import redis.asyncio as aioredis

from bot.config import Settings
from bot.jobs.service import JobService
from bot.jobs.takeover import Takeover
from bot.storage.database import Database
from bot.storage.models import JobRow
from inference.protocol import JobFailed
from inference.queues.lease import BotIdInUse, BotLease
from inference.queues.wire import Keys
from tests.bot.backends import Backend
from tests.bot.fakes import WAIT, FakeClient, FakeWallClock, Recorder, RecordingJobs, record
from tests.inference.redis_backends import until
from tests.redis_server import RedisServer, fresh_keys

DEAD = "bot-1"
LIVE_SECONDS = 30.0
SHORT_SECONDS = 0.2  # a lease left to run out


@dataclass
class Process:
    """One bot process's share of the takeover: its ledger, its lease on Redis, what its job service was asked."""

    database: Database
    lease: BotLease
    jobs: RecordingJobs
    takeover: Takeover

    def answered(self) -> list[str]:
        """The jobs this process's job service was asked to run again, in order."""
        return [record.job_id for record, _ in self.jobs.resumed]


StartProcess = Callable[..., Awaitable[Process]]


@pytest.fixture
async def start(redis_server: RedisServer, backend: Backend, clock: FakeWallClock) -> AsyncIterator[StartProcess]:
    """Start bot processes by id on one Redis prefix and one ledger; all stopped after the test."""
    keys: Keys = fresh_keys()
    started: list[tuple[aioredis.Redis, Database, BotLease]] = []

    async def start_process(
        bot_id: str, *, seconds: float = LIVE_SECONDS, on_lost: Callable[[Exception], None] | None = None
    ) -> Process:
        client = aioredis.from_url(redis_server.url)
        database = backend.database(Settings(_env_file=None, bot_id=bot_id), clock=clock)  # type: ignore[call-arg]
        await database.start()
        lease = BotLease(client, bot_id, seconds=seconds, keys=keys)
        started.append((client, database, lease))
        await lease.acquire(wait_for_claim=0)
        jobs = RecordingJobs()
        discord_client = cast(discord.Client, FakeClient(Recorder(lambda: 0.0)))
        takeover = Takeover(discord_client, database, cast(JobService, jobs), lease, on_lost=on_lost)
        return Process(database, lease, jobs, takeover)

    yield start_process
    for client, database, lease in started:
        await lease.release()
        await database.close()
        await client.aclose()


async def leftovers(database: Database, clock: FakeWallClock) -> tuple[JobRow, JobRow]:
    """A queued and a running job left unfinished in `database`'s bot's name, and a finished one (never moved)."""
    queued = await record(database)
    clock.advance(seconds=1)
    running = await record(database)
    await database.ledger.mark_running(running.id)
    finished = await record(database)
    await database.ledger.mark_finished(finished.id, JobFailed(finished.id, "no"))
    return queued, running


async def dead_bot_with_jobs(start: StartProcess, clock: FakeWallClock) -> tuple[Process, list[str]]:
    """A bot process that took two jobs and then stopped renewing its lease; their ids, oldest first."""
    dead = await start(DEAD, seconds=SHORT_SECONDS)
    queued, running = await leftovers(dead.database, clock)
    return dead, [queued.id, running.id]


async def seen_dead(process: Process, bot_id: str) -> bool:
    """Whether `bot_id`'s lease has run out, as `process` sees it on Redis."""
    return bot_id in await process.lease.dead_bots()


async def lease_gone(lease: BotLease) -> bool:
    """Whether `lease`'s own key has run out on Redis."""
    return not await lease.client.exists(lease.keys.bot_lease(lease.bot_id))


async def owners(database: Database, job_ids: list[str]) -> list[str]:
    rows = [await database.ledger.get_job(job_id) for job_id in job_ids]
    return [row.bot_id for row in rows if row is not None]


async def test_a_live_process_takes_over_a_dead_bots_unfinished_jobs_once(
    start: StartProcess, clock: FakeWallClock
) -> None:
    _, job_ids = await dead_bot_with_jobs(start, clock)
    live = await start("bot-2")
    await until(lambda: seen_dead(live, DEAD), f"{DEAD}'s lease to run out")

    assert await live.takeover.once() == job_ids

    assert await owners(live.database, job_ids) == ["bot-2", "bot-2"]
    assert [job.id for job in await live.database.ledger.unfinished_jobs()] == job_ids
    assert live.answered() == job_ids and live.jobs.failed == []

    assert await live.takeover.once() == []
    assert live.answered() == job_ids, "no job is answered twice"
    restarted = await start(DEAD)  # the claim ended: the dead bot's restart takes its id at once
    assert await restarted.database.ledger.unfinished_jobs() == [], "and finds nothing of its own left"


async def test_of_two_live_processes_racing_for_one_dead_bot_exactly_one_adopts_its_jobs(
    start: StartProcess, clock: FakeWallClock
) -> None:
    _, job_ids = await dead_bot_with_jobs(start, clock)
    two, three = await start("bot-2"), await start("bot-3")
    await until(lambda: seen_dead(two, DEAD), f"{DEAD}'s lease to run out")

    adopted = await asyncio.gather(two.takeover.once(), three.takeover.once())

    assert sorted(adopted, key=len) == [[], job_ids]
    winner, loser = (two, three) if adopted[0] else (three, two)
    assert winner.answered() == job_ids and loser.answered() == []
    assert await owners(winner.database, job_ids) == [winner.lease.bot_id] * 2


async def test_a_process_not_sure_of_its_own_lease_takes_nothing(start: StartProcess, clock: FakeWallClock) -> None:
    dead, job_ids = await dead_bot_with_jobs(start, clock)
    unsure = await start("bot-2", seconds=SHORT_SECONDS)  # and not renewed: not fresh once most of it has passed
    await until(lambda: not unsure.lease.fresh, "bot-2's own lease to stop being fresh")
    await until(lambda: seen_dead(unsure, DEAD), f"{DEAD}'s lease to run out")

    assert await unsure.takeover.once() == []

    assert unsure.answered() == []
    assert await owners(dead.database, job_ids) == [DEAD, DEAD]
    sure = await start("bot-3")  # it left the dead bot unclaimed: a process sure of its id takes the jobs
    assert await sure.takeover.once() == job_ids


async def test_run_stops_the_bot_in_one_line_when_its_own_lease_is_lost(start: StartProcess) -> None:
    lost: list[Exception] = []
    process = await start("bot-2", seconds=SHORT_SECONDS, on_lost=lost.append)
    running = asyncio.create_task(process.takeover.run())
    await until(lambda: lease_gone(process.lease), "bot-2's own lease to run out")
    assert not await process.lease.renew()  # what the bot's renewal loop finds: lost for good

    await asyncio.wait_for(running, WAIT)

    (error,) = lost
    assert isinstance(error, BotIdInUse)
    message = str(error)
    assert "\n" not in message and "'bot-2'" in message and "restart it" in message
