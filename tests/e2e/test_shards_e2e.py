"""Shards end to end: the real discord.py client as an AutoShardedBot on the fake Discord's shard handshake.

Four shards in one process, and two `stepgrid run` processes (shards 0-1 and 2-3) on one PostgreSQL
ledger: commands from servers on every shard are answered, each by the process that runs its shard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.sharding import shard_of
from tests.e2e.instant import instant_bot, instant_settings
from tests.e2e.test_http_e2e import free_port, get, sample
from tests.fake_discord import FakeDiscord, FakeGuild, FakeMember, running_fake

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
        assert {g.id for g in bot.guilds} == {guild.id for guild, _ in guilds[2:]}
        await imagine_everywhere(fake, guilds[2:])
