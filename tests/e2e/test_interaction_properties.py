"""Properties of every interaction a crafted client can send: exactly one answer, within Discord's limits.

Hypothesis draws slash commands with any option values (out of range, the wrong type, thousands of
characters, left out) and button clicks with any job id, from members, admins, another server and
direct messages. The real discord.py client runs against the fake Discord on a loop in its own
thread (so that Hypothesis drives plain functions); jobs finish at once (InstantQueue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.chat.client import Stepgrid
from bot.config import Settings
from bot.replies.buttons import ACTIONS
from bot.storage.database import Database
from inference.requests import SCHEDULER_NAMES
from tests.e2e.helpers import custom_ids, result_files
from tests.e2e.instant import instant_bot, instant_settings
from tests.fake_discord import (
    DEFAULT_PERMISSIONS,
    FakeDiscord,
    FakeGuild,
    FakeMember,
    InteractionHandle,
    RecordedRequest,
)

T = TypeVar("T")
WAIT = 30.0  # a hang guard, not a timing expectation
MANAGE_MESSAGES = 0x2000

# Discord's limits on what a message may carry.
MAX_CONTENT, MAX_EMBEDS, MAX_EMBED_TOTAL, MAX_FIELDS = 2000, 10, 6000, 25
EMBED_PART_LIMITS = {"title": 256, "description": 4096}
FIELD_LIMITS = {"name": 256, "value": 1024}


class LoopThread:
    """An event loop in a thread; `run` waits for a coroutine on it from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="properties-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


class ErrorLog(logging.Handler):
    """Collects what is logged at ERROR or above: a traceback anywhere is a failed example."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class World:
    loop: LoopThread
    fake: FakeDiscord
    bot: Stepgrid
    other_guild: FakeGuild
    moderator: FakeMember  # Manage Messages in the other server
    job_ids: list[str]
    errors: ErrorLog

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self.loop.run(wrapped())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    loop = LoopThread()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    stack = contextlib.AsyncExitStack()

    async def start() -> World:
        fake = FakeDiscord(timeout=WAIT)
        await fake.start()
        stack.push_async_callback(fake.stop)
        stack.enter_context(fake.patch_discord())
        other = fake.add_guild("Another server")
        moderator = other.member(fake.new_id(), "mallory", DEFAULT_PERMISSIONS | MANAGE_MESSAGES)
        path = tmp_path_factory.mktemp("properties") / "stepgrid.sqlite3"
        database = Database(Path(path), Settings(_env_file=None))  # type: ignore[call-arg]
        await database.start()
        stack.push_async_callback(database.close)
        settings = instant_settings(daily_steps_per_user=10**6, max_concurrent_jobs_per_user=3)
        bot = await stack.enter_async_context(instant_bot(fake, settings=settings, database=database))
        return World(loop, fake, bot, other, moderator, [], errors)

    state = loop.run(start())
    try:
        yield state
    finally:
        loop.run(stack.aclose())
        logging.getLogger().removeHandler(errors)
        loop.stop()


# --- what every answer must be ---------------------------------------------------------------------


def check_message_limits(request: RecordedRequest) -> None:
    data = request.data
    content = data.get("content")
    assert content is None or len(content) <= MAX_CONTENT, f"content of {len(content)} characters"
    embeds = data.get("embeds") or []
    assert len(embeds) <= MAX_EMBEDS
    for embed in embeds:
        total = 0
        for part, limit in EMBED_PART_LIMITS.items():
            text = embed.get(part) or ""
            assert len(text) <= limit, f"embed {part} of {len(text)} characters"
            total += len(text)
        footer = (embed.get("footer") or {}).get("text") or ""
        assert len(footer) <= 2048
        fields = embed.get("fields") or []
        assert len(fields) <= MAX_FIELDS
        for field in fields:
            for part, limit in FIELD_LIMITS.items():
                assert 0 < len(field[part]) <= limit, f"embed field {part} of {len(field[part])} characters"
                total += len(field[part])
        assert total + len(footer) <= MAX_EMBED_TOTAL, f"embed of {total} characters"


async def settle(world: World, handle: InteractionHandle) -> None:
    """Wait for the interaction's answer, then for the job it started (if any) to end."""
    callback = await handle.wait_for_callback()
    if callback.ok and (callback.json or {}).get("type") == 5:  # deferred: a job was accepted
        await handle.wait_for(
            lambda r: bool(result_files(r)) or (r.is_followup and r.ephemeral) or r.method == "DELETE"
        )
    tasks = list(world.bot.jobs._tasks.values())
    if tasks:
        await asyncio.wait(tasks, timeout=WAIT)


def check_answered_once(world: World, handle: InteractionHandle) -> None:
    callbacks = handle.callbacks
    assert len(callbacks) == 1, [c.path for c in callbacks]
    assert callbacks[0].ok, callbacks[0].response
    for request in handle.requests:
        check_message_limits(request)
    messages = "\n".join(record.getMessage() for record in world.errors.records)
    assert not world.errors.records, messages


def remember_jobs(world: World, handle: InteractionHandle) -> None:
    message = handle.original_message
    for custom_id in custom_ids(message):
        job_id = custom_id.rsplit(":", 1)[-1]
        if job_id not in world.job_ids:
            world.job_ids.append(job_id)


# --- strategies ------------------------------------------------------------------------------------

long_text = st.text(max_size=3000) | st.text(alphabet="ab ,x\u200b\u0441", max_size=6000)
any_text = st.text(max_size=200) | long_text
any_int = st.integers(-(10**15), 10**15) | st.integers(0, 200) | st.text(max_size=8) | st.booleans()
any_float = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.floats(0, 40) | st.text(max_size=8)
sizes = st.sampled_from(["512", "256", "768x512", "1024", "8", "0x0", "99999x2", "512x512x512"]) | any_text
schedulers = st.sampled_from(SCHEDULER_NAMES) | any_text


def options(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Each option drawn or left out."""
    return st.fixed_dictionaries({}, optional=strategies)


COMMANDS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "imagine": options(
        prompt=st.sampled_from(["a lighthouse", "a cat"]) | any_text,
        negative_prompt=any_text,
        steps=any_int,
        scheduler=schedulers,
        seed=any_int,
        guidance=any_float,
        size=sizes,
        count=any_int,
    ),
    "compare-steps": options(
        prompt=st.sampled_from(["a lighthouse", "a cat"]) | any_text,
        steps=st.sampled_from(["2,4", "5,10,20", "1,2,3,4,5,6,7,8,9,10,11,12,13"]) | any_text,
        scheduler=schedulers,
        seed=any_int,
        negative_prompt=any_text,
        guidance=any_float,
        size=sizes,
    ),
    "compare-schedulers": options(
        prompt=st.sampled_from(["a lighthouse", "a cat"]) | any_text,
        schedulers=st.sampled_from(["Euler a, DDIM", "euler, heun, nope", "DDIM"]) | schedulers | any_text,
        steps=st.sampled_from(["2,4", "1,2,3,4,5,6,7"]) | any_text,
        seed=any_int,
        negative_prompt=any_text,
        guidance=any_float,
        size=sizes,
    ),
    "compare-guidance": options(
        prompt=st.sampled_from(["a lighthouse", "a cat"]) | any_text,
        guidance=st.sampled_from(["1, 3, 7.5", "0, 1, 5", "3"]) | any_text,
        steps=st.sampled_from(["2", "2,4"]) | any_text,
        scheduler=schedulers,
        seed=any_int,
        negative_prompt=any_text,
        size=sizes,
    ),
    "usage": options(),
    "sweet-spots": options(share=st.booleans()),
    "usage-server": options(period=st.sampled_from(["today", "7 days", "30 days", "all time"]) | any_text),
    "limits-set": options(
        max_steps=any_int,
        default_steps=any_int,
        allowed_schedulers=schedulers,
        default_scheduler=schedulers,
        max_grid_cells=any_int,
        max_image_size=any_int,
        compute_budget=any_int,
        daily_steps=any_int,
        concurrent_jobs=any_int,
        banned_words=any_text,
    ),
    "limits-reset": options(setting=st.sampled_from(["max_steps", "banned_words", "default_scheduler"]) | any_text),
}
SUBCOMMANDS = {"limits show": options(), "limits history": options()}


@st.composite
def commands(draw: st.DrawFn) -> tuple[str, str | None, dict[str, Any]]:
    name = draw(st.sampled_from([*COMMANDS, *SUBCOMMANDS]))
    if name in SUBCOMMANDS:
        group, sub = name.split()
        return group, sub, draw(SUBCOMMANDS[name])
    return name, None, draw(COMMANDS[name])


# --- the properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=commands(), admin=st.booleans(), in_dm=st.booleans())
def test_every_command_is_answered_exactly_once_within_discords_limits(
    world: World, command: tuple[str, str | None, dict[str, Any]], admin: bool, in_dm: bool
) -> None:
    name, subcommand, values = command
    fake = world.fake
    user = fake.admin if admin else fake.member

    async def interact() -> InteractionHandle:
        if in_dm and subcommand is None:
            handle = await fake.invoke_in_dm(name, values, user=user.user)
        else:
            try:
                handle = await fake.invoke(name, values, user=user, subcommand=subcommand)
            except LookupError:  # Discord itself refuses an admin command to a member: ask for /usage instead
                handle = await fake.invoke("usage", {}, user=user)
        await settle(world, handle)
        return handle

    world.errors.records.clear()
    handle = world.run(interact())
    check_answered_once(world, handle)
    remember_jobs(world, handle)


job_suffixes = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@st.composite
def clicks(draw: st.DrawFn) -> tuple[str, str]:
    """(who clicks, custom id): any job action on a known job or any id the button grammar allows."""
    action = draw(st.sampled_from(ACTIONS))
    who = draw(st.sampled_from(["owner", "member", "admin", "other server", "dm"]))
    return who, f"stepgrid:{action}:{draw(job_suffixes)}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(click=clicks(), known=st.booleans(), index=st.integers(0, 1000))
def test_every_button_is_answered_exactly_once_within_discords_limits(
    world: World, click: tuple[str, str], known: bool, index: int
) -> None:
    fake = world.fake
    if not world.job_ids:  # a job of the test server's member, for buttons to act on
        first = world.run(fake.invoke("imagine", {"prompt": "a lighthouse", "steps": 2, "size": "256"}))
        world.run(settle(world, first))
        remember_jobs(world, first)
    who, custom_id = click
    if known:
        action = custom_id.split(":")[1]
        custom_id = f"stepgrid:{action}:{world.job_ids[index % len(world.job_ids)]}"

    async def interact() -> InteractionHandle:
        if who == "dm":
            handle = await fake.press(custom_id, dm=True)
        elif who == "other server":
            handle = await fake.press(custom_id, user=world.moderator, guild=world.other_guild)
        else:
            user = {"owner": fake.member, "member": fake.guild.member(fake.new_id(), "bob"), "admin": fake.admin}[who]
            handle = await fake.press(custom_id, user=user)
        await settle(world, handle)
        return handle

    world.errors.records.clear()
    handle = world.run(interact())
    check_answered_once(world, handle)
    remember_jobs(world, handle)


def test_a_2500_character_size_is_refused_in_one_short_line(world: World) -> None:
    async def interact() -> InteractionHandle:
        handle = await world.fake.invoke("imagine", {"prompt": "a fox", "size": "9" * 2500})
        await settle(world, handle)
        return handle

    world.errors.records.clear()
    handle = world.run(interact())
    check_answered_once(world, handle)
    text = handle.callbacks[0].data["content"]
    assert "Could not read size '9999" in text and len(text) < 200, text
