"""Shards end to end: the real discord.py client as an AutoShardedBot on the fake Discord's shard handshake.

Four shards in one process, and two `stepgrid run` processes (shards 0-1 and 2-3) on one PostgreSQL
ledger: commands from servers on every shard are answered, each by the process that runs its shard.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.sharding import shard_of
from tests.e2e.bot_process import WORKER_READY, BotProcess, bot_env
from tests.e2e.instant import instant_bot, instant_settings
from tests.e2e.test_http_e2e import free_port, get, sample
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMember, InteractionHandle, RecordedRequest, running_fake
from tests.postgres_server import PostgresServer

COUNT = 4


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=60.0) as fake:  # a hang guard on a busy CPU, not a timing expectation
        yield fake


def guilds_on_every_shard(fake: FakeDiscord, count: int = COUNT) -> list[tuple[FakeGuild, FakeMember]]:
    """A server (with a member) on each shard, added before the bot connects."""
    made = []
    for shard in range(count):
        guild = fake.add_guild(f"server on shard {shard}", fake.guild_id_on_shard(shard, count))
        made.append((guild, guild.member(fake.new_id(), f"member-{shard}")))
    return made


async def imagine_everywhere(fake: FakeDiscord, guilds: list[tuple[FakeGuild, FakeMember]]) -> None:
    """/imagine in every server at once; each is deferred, then answered with its picture."""
    handles = [
        await fake.invoke("imagine", {"prompt": f"a lighthouse {i}", "steps": 4}, guild=guild, user=member)
        for i, (guild, member) in enumerate(guilds)
    ]
    for handle in handles:
        callback = await handle.wait_for_callback()
        assert callback.ok and callback.json["type"] == 5, callback.json  # deferred
        result = await handle.wait_for(lambda r: r.ok and bool(r.files))
        assert result.files[0].filename.endswith(".png")


async def test_four_shards_in_one_process_answer_servers_on_every_shard(fake: FakeDiscord) -> None:
    guilds = guilds_on_every_shard(fake)
    port = free_port()
    settings = instant_settings(shard_count=COUNT, http_port=port)
    async with instant_bot(fake, settings=settings) as bot:
        connections = await fake.wait_for_shards(COUNT)
        assert sorted(bot.shards) == list(range(COUNT)) and bot.shard_count == COUNT
        assert all(conn.shard == (shard, COUNT) for shard, conn in connections.items())
        for guild, _ in guilds:  # each server arrived on its own shard's connection
            found = bot.get_guild(guild.id)
            assert found is not None and found.shard_id == shard_of(guild.id, COUNT)

        await imagine_everywhere(fake, guilds)

        _, metrics = await get(port, "/metrics")
        for shard in range(COUNT):
            assert sample(metrics, "stepgrid_shard_connected", shard=str(shard)) == 1
            assert sample(metrics, "stepgrid_shard_servers", shard=str(shard)) >= 1
            assert f'stepgrid_shard_latency_seconds{{shard="{shard}"}}' in metrics
        status, page = await get(port, "/")
        assert status == 200 and f"<h2>Shards ({COUNT})</h2>" in page and page.count(">connected<") == COUNT
        _, ready = await get(port, "/readyz")
        assert "Discord" not in ready, ready  # connected: every shard of this process is open


async def test_without_shard_settings_the_bot_runs_the_count_discord_recommends(fake: FakeDiscord) -> None:
    fake.shard_count = 2
    guilds = guilds_on_every_shard(fake, 2)
    async with instant_bot(fake) as bot:
        await fake.wait_for_shards(2)
        assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]
        assert any(r.path == "/gateway/bot" for r in fake.requests)
        await imagine_everywhere(fake, guilds)


async def test_a_bot_process_answers_only_the_servers_on_its_own_shards(fake: FakeDiscord) -> None:
    guilds = guilds_on_every_shard(fake)
    async with instant_bot(fake, settings=instant_settings(shard_count=COUNT, shard_ids="2-3")) as bot:
        assert sorted(bot.shards) == [2, 3]
        # Every server on shards 2-3 and no other: the fake's own default server is on a shard of its id's moment.
        assert {g.id for g in bot.guilds} == {g for g in fake.guilds if shard_of(g, COUNT) in (2, 3)}
        assert {guild.id for guild, _ in guilds[2:]} <= {g.id for g in bot.guilds}
        await imagine_everywhere(fake, guilds[2:])


# --- two `stepgrid run` processes, shards 0-1 and 2-3, one PostgreSQL ledger ---------------------------


def shard_env(fake: FakeDiscord, url: str, tmp_path: Path, model_cache_dir: Path, ids: str) -> dict[str, str]:
    env = bot_env(fake, tmp_path / "data" / "unused.sqlite3", model_cache_dir)
    env.pop("STEPGRID_DEV_GUILD_ID")  # global commands: every server has them
    return {**env, "STEPGRID_DATABASE_URL": url, "STEPGRID_SHARD_COUNT": str(COUNT), "STEPGRID_SHARD_IDS": ids}


def job_rows(url: str) -> dict[str, tuple[int | None, str]]:
    """job id -> (guild id, status) of every job in the ledger."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, guild_id, status FROM jobs")).all()
    finally:
        engine.dispose()
    return {job_id: (guild_id, status) for job_id, guild_id, status in rows}


def images_posted(handle: InteractionHandle) -> list[RecordedRequest]:
    return [r for r in handle.requests if r.ok and any(f.filename.startswith("stepgrid-") for f in r.files)]


@pytest.mark.slow
async def test_two_processes_with_disjoint_shards_share_one_postgresql_ledger_and_each_recovers_its_own(
    postgres_server: PostgresServer, tmp_path: Path, model_cache_dir: Path
) -> None:
    async with running_fake(timeout=180.0) as fake:  # a hang guard for CPU-bound workers
        guilds = guilds_on_every_shard(fake)
        url = postgres_server.create_database()
        first = BotProcess(shard_env(fake, url, tmp_path, model_cache_dir, "0-1"), tmp_path / "first.log")
        second = BotProcess(shard_env(fake, url, tmp_path, model_cache_dir, "2-3"), tmp_path / "second.log")
        try:
            await first.start()
            await first.wait_for_log("on shards 0-1 of 4", within=fake.timeout)
            await second.start()
            await second.wait_for_log("on shards 2-3 of 4", within=fake.timeout)
            assert sorted(fake.live_shards()) == [0, 1, 2, 3]
            for bot in (first, second):
                await bot.wait_for_log(WORKER_READY, within=fake.timeout)

            # A third process for shards another one runs: one line, exit 2, before touching anything.
            overlapping = BotProcess(shard_env(fake, url, tmp_path, model_cache_dir, "1-2"), tmp_path / "third.log")
            await overlapping.start()
            assert await overlapping.exited() == 2
            [line] = [line for line in overlapping.lines if line.strip()]
            assert "shards 1-2 of 4 already run in another Stepgrid bot" in line, line
            assert "STEPGRID_SHARD_IDS" in line, line

            # Every server is answered, each by the process that runs its shard.
            await imagine_everywhere(fake, guilds)

            # kill -9 the second process mid-job (a server on shard 3), then the first too.
            guild, member = guilds[3]
            slow = await fake.invoke("imagine", {"prompt": "a slow one", "steps": 150, "size": "512"},
                                     guild=guild, user=member)  # fmt: skip
            await slow.wait_for(lambda r: r.is_edit and r.ok and "step " in (r.data.get("content") or ""))
            await second.kill(signal.SIGKILL)
            await first.kill(signal.SIGKILL)
            [(job_id, (guild_id, status))] = [
                (job, row) for job, row in (await asyncio.to_thread(job_rows, url)).items() if row[1] != "done"
            ]
            assert (guild_id, status) == (guild.id, "running")

            # The first process restarts and leaves the job alone: shard 3 is not its own.
            await first.start()
            await first.wait_for_log("on shards 0-1 of 4", within=fake.timeout)
            assert not any("recovered" in line for line in first.lines), first.lines
            assert (await asyncio.to_thread(job_rows, url))[job_id] == (guild.id, "running")

            # The second one restarts and answers it, once.
            await second.start()
            await second.wait_for_log(f"job {job_id} done", within=fake.timeout)
            assert any("recovered 1 job(s) left by the last run: 1 re-queued" in line for line in second.lines)
            assert len(images_posted(slow)) == 1
        finally:
            for bot in (first, second):
                if bot.process is not None and bot.process.returncode is None:
                    await bot.kill(signal.SIGKILL)
