"""A bot process's id on Redis: one live holder, renewal, expiry, and one claimer of a dead id.

Against the tests' real redis-server; an expired lease is made by deleting its key (what its TTL
running out does), never by waiting.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from inference.queues.lease import BotIdInUse, BotLease
from inference.queues.wire import check_bot_id
from tests.redis_server import RedisServer, fresh_keys


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_a_second_live_process_with_the_same_bot_id_is_refused_in_one_line(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    first = BotLease(client, "bot-1", seconds=30, keys=keys)
    await first.acquire()
    with pytest.raises(BotIdInUse) as refused:
        await BotLease(client, "bot-1", seconds=30, keys=keys).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert "'bot-1'" in message and first.holder in message and "STEPGRID_BOT_ID" in message
    await BotLease(client, "bot-2", seconds=30, keys=keys).acquire()  # another id is another process


async def test_a_restart_in_the_same_slot_takes_its_own_stale_lease_at_once(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    # What a kill -9 leaves: this host, a pid that is not running any more (or the restarted container's own).
    for pid in (os.getpid(), 2**22 + 7):
        await client.set(keys.bot_lease("bot-1"), f"pid {pid} on {socket.gethostname()} (dead0000)", px=60_000)
        lease = BotLease(client, "bot-1", seconds=30, keys=keys)
        await lease.acquire(wait_for_claim=0)
        assert (await client.get(keys.bot_lease("bot-1"))) == lease.holder.encode()
        assert lease.fresh


async def test_a_lease_held_by_a_live_process_on_another_host_is_not_taken(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    await client.set(keys.bot_lease("bot-1"), f"pid {os.getpid()} on elsewhere.example (a1b2c3d4)", px=60_000)
    with pytest.raises(BotIdInUse, match=r"elsewhere\.example"):
        await BotLease(client, "bot-1", seconds=30, keys=keys).acquire(wait_for_claim=0)


async def test_renewal_fails_for_good_once_the_lease_is_gone_or_someone_elses(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    lease = BotLease(client, "bot-1", seconds=30, keys=keys)
    await lease.acquire()
    assert await lease.renew()
    await client.delete(keys.bot_lease("bot-1"))  # its TTL ran out (the process was cut off from Redis)
    assert not await lease.renew()
    assert lease.lost and not lease.fresh
    await client.set(keys.bot_lease("bot-1"), lease.holder)  # even its own value back: lost stays lost
    assert not await lease.renew()


async def test_one_of_two_live_processes_claims_a_dead_bot_and_its_restart_waits_for_the_claim(
    client: aioredis.Redis,
) -> None:
    keys = fresh_keys()
    dead = BotLease(client, "bot-1", seconds=30, keys=keys)
    await dead.acquire()
    survivors = [BotLease(client, name, seconds=30, keys=keys) for name in ("bot-2", "bot-3")]
    for survivor in survivors:
        await survivor.acquire()
        assert await survivor.dead_bots() == []  # bot-1 lives
    await client.delete(keys.bot_lease("bot-1"))  # bot-1 was killed and its lease ran out
    assert await survivors[0].dead_bots() == ["bot-1"]
    claims = await asyncio.gather(*(survivor.claim("bot-1") for survivor in survivors))
    assert sorted(claims) == [False, True], "exactly one process takes a dead bot's jobs over"
    winner = survivors[claims.index(True)]

    restarted = BotLease(client, "bot-1", seconds=30, keys=keys)
    restart = asyncio.create_task(restarted.acquire(wait_for_claim=60))
    await asyncio.sleep(0)
    assert not restart.done()
    await winner.end_claim("bot-1")  # the jobs moved: the restart may have its id back
    await restart
    assert restarted.fresh
    assert await winner.dead_bots() == []


def test_bot_ids_are_short_names_and_a_bad_one_says_what_to_use() -> None:
    assert check_bot_id("bot-1.eu_west") == "bot-1.eu_west"
    for bad in ("", "-bot", "bot 1", "bot:1", "x" * 64):
        with pytest.raises(ValueError, match="letters, digits"):
            check_bot_id(bad)
