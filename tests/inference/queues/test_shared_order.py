"""The fair order shared by every bot process on one Redis: members take turns across processes, the agents'
lanes are never overbooked, a job is released once. Against the tests' real redis-server; an agent's answer
is its result key being set, as the agent sets it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from inference.queues.shared_order import SharedOrder
from inference.queues.wire import Keys
from tests.redis_server import RedisServer, fresh_keys

TINY = {"tiny": 1}  # one agent with one lane


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def released_to(client: aioredis.Redis, keys: Keys, model: str = "tiny") -> list[tuple[str, str]]:
    """(job, bot) of every entry in the model's stream, oldest first."""
    entries = await client.xrange(keys.jobs(model))
    return [(fields[b"job"].decode(), fields[b"bot"].decode()) for _, fields in entries]


async def answer(client: aioredis.Redis, keys: Keys, job_id: str) -> None:
    await client.set(keys.result(job_id), b"done")


async def test_members_take_turns_across_bot_processes_not_per_process(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    a, b = SharedOrder(client, "bot-a", keys), SharedOrder(client, "bot-b", keys)
    # Member x on two servers, each served by another process; member y on one.
    for order, job, user in ((a, "x1", "x"), (a, "x2", "x"), (b, "x3", "x"), (b, "y1", "y")):
        assert await order.enqueue(job, user_id=user, model="tiny", lanes=1, request=b"\x00req") == "queued"
    started = []
    outcome = await a.release(TINY)
    assert outcome.released == ("x1",)
    assert outcome.waiting == ("y1", "x2", "x3"), "y's first job is next, before x's second (from either process)"
    started += outcome.released
    assert (await b.release(TINY)).released == (), "one lane: nothing more until x1 is answered"
    while len(started) < 4:
        await answer(client, keys, started[-1])
        outcome = await (a if len(started) % 2 else b).release(TINY)  # whichever process looks next
        assert len(outcome.released) == 1
        started += outcome.released
    assert started == ["x1", "y1", "x2", "x3"]
    assert await released_to(client, keys) == [("x1", "bot-a"), ("y1", "bot-b"), ("x2", "bot-a"), ("x3", "bot-b")]


async def test_a_job_is_released_once_however_many_processes_release_at_once(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    orders = [SharedOrder(client, f"bot-{n}", keys) for n in range(4)]
    for n in range(12):
        await orders[n % 4].enqueue(f"j{n}", user_id=f"u{n % 3}", model="tiny", lanes=1, request=b"r")
    outcomes = await asyncio.gather(*(order.release({"tiny": 5}) for order in orders))
    released = [job for outcome in outcomes for job in outcome.released]
    assert len(released) == len(set(released)) == 5, "five lanes, five jobs, each once"
    assert await client.xlen(keys.jobs("tiny")) == 5


async def test_queued_again_after_a_restart_or_a_takeover_a_job_keeps_its_place_and_answers_to_its_new_bot(
    client: aioredis.Redis,
) -> None:
    keys = fresh_keys()
    a, b = SharedOrder(client, "bot-a", keys), SharedOrder(client, "bot-b", keys)
    await a.enqueue("running", user_id="z", model="tiny", lanes=1, request=b"r")
    assert (await a.release(TINY)).released == ("running",)
    await a.enqueue("first", user_id="x", model="tiny", lanes=1, request=b"r")
    await b.enqueue("second", user_id="y", model="tiny", lanes=1, request=b"r")
    # bot-a died; bot-b took its jobs over and queues them again under their ids.
    assert await b.enqueue("first", user_id="x", model="tiny", lanes=1, request=b"r") == "queued"
    assert await b.enqueue("running", user_id="z", model="tiny", lanes=1, request=b"r") == "released"
    await answer(client, keys, "running")
    assert await b.enqueue("running", user_id="z", model="tiny", lanes=1, request=b"r") == "answered"
    outcome = await b.release(TINY)
    assert outcome.released == ("first",) and outcome.waiting == ("second",)
    assert (await released_to(client, keys))[-1] == ("first", "bot-b"), "its notices go to the bot answering it"


async def test_a_withdrawn_job_leaves_the_order_and_one_released_cannot_be_withdrawn(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    order = SharedOrder(client, "bot-a", keys)
    for job in ("j1", "j2", "j3"):
        await order.enqueue(job, user_id="x", model="tiny", lanes=1, request=b"r")
    assert (await order.release(TINY)).released == ("j1",)
    assert not await order.withdraw("j1")
    assert await order.withdraw("j2")
    assert not await order.withdraw("j2")
    await answer(client, keys, "j1")
    assert (await order.release(TINY)).released == ("j3",)


async def test_a_model_without_agents_holds_only_its_own_jobs(client: aioredis.Redis) -> None:
    keys = fresh_keys()
    order = SharedOrder(client, "bot-a", keys)
    await order.enqueue("xl", user_id="x", model="tiny-sdxl", lanes=1, request=b"r")
    await order.enqueue("small", user_id="y", model="tiny", lanes=2, request=b"r")
    outcome = await order.release(TINY)  # a job wider than the lanes still runs when nothing else does
    assert outcome.released == ("small",) and outcome.waiting == ("xl",)
