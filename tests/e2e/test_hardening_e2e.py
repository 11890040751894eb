"""Hardening, end to end: the real discord.py client against the fake Discord, jobs answered at once.

Each interaction is answered exactly once, only in the server its job belongs to, with banned words
held however they are spelled, and every reply within Discord's limits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.storage.database import Database
from tests.e2e.helpers import button, content, result_files, wait_for_progress, wait_for_result
from tests.e2e.instant import InstantQueue, LoadingQueue, instant_bot, instant_settings
from tests.fake_discord import (
    DEFAULT_PERMISSIONS,
    FakeDiscord,
    InteractionHandle,
    RecordedRequest,
    running_fake,
)

MANAGE_MESSAGES = 0x2000

IMAGINE = {"prompt": "a lighthouse at dusk", "steps": 4, "size": "256"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=30.0) as fake:  # a hang guard, not a timing expectation
        yield fake


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "stepgrid.sqlite3", Settings(_env_file=None))  # type: ignore[call-arg]
    await database.start()
    try:
        yield database
    finally:
        await database.close()


class LedgerOutage:
    """Makes the ledger's final write of a job fail (a disk full for a moment) until `end()`."""

    def __init__(self, database: Database) -> None:
        self.failed = 0
        self.failed_once = asyncio.Event()
        self._on = True
        ledger = database.ledger
        original = ledger.mark_finished

        async def mark_finished(job_id: str, outcome: Any) -> bool:
            if self._on:
                self.failed += 1
                self.failed_once.set()
                raise sqlite3.OperationalError("database or disk is full")
            return await original(job_id, outcome)

        ledger.mark_finished = mark_finished  # type: ignore[method-assign]

    def end(self) -> None:
        self._on = False


def results_of(handle: InteractionHandle) -> list[RecordedRequest]:
    """Every successful request that delivered this interaction's result image(s)."""
    return [r for r in handle.requests if r.ok and result_files(r)]


def statuses(database: Database) -> dict[str, str]:
    with sqlite3.connect(database.path) as connection:
        return dict(connection.execute("SELECT id, status FROM jobs").fetchall())


def refusal(handle: InteractionHandle) -> str:
    """The text of the one ephemeral answer a refused interaction got."""
    [callback] = handle.callbacks
    assert callback.ok and callback.ephemeral, callback
    return content(callback) or ""


# --- 1. exactly once, whatever the ledger does ---------------------------------------------------------


async def test_a_ledger_write_failing_at_the_end_of_a_job_neither_blocks_the_member_nor_reruns_it(
    fake: FakeDiscord, database: Database
) -> None:
    settings = instant_settings(max_concurrent_jobs_per_user=1)
    outage = LedgerOutage(database)
    async with instant_bot(fake, settings=settings, database=database):
        first = await fake.invoke("imagine", IMAGINE)
        await wait_for_result(first)
        await asyncio.wait_for(outage.failed_once.wait(), fake.timeout)
        outage.end()  # the disk has room again
        second = await fake.invoke("imagine", {**IMAGINE, "prompt": "a second one"})
        await wait_for_result(second)  # not "you already have 1 queued or running"
    assert set(statuses(database).values()) == {"done"}
    async with instant_bot(fake, settings=settings, database=database) as bot:  # a restart runs nothing again
        assert bot.jobs.active_jobs == frozenset()
    assert [len(results_of(handle)) for handle in (first, second)] == [1, 1]


async def test_a_result_whose_ledger_write_never_landed_is_not_posted_again_after_a_restart(
    fake: FakeDiscord, database: Database
) -> None:
    outage = LedgerOutage(database)
    async with instant_bot(fake, database=database):
        handle = await fake.invoke("imagine", IMAGINE)
        await wait_for_result(handle)
        await asyncio.wait_for(outage.failed_once.wait(), fake.timeout)
    [job_id] = statuses(database)
    assert statuses(database) == {job_id: "delivering"}  # the outage outlived the bot
    outage.end()
    queue = InstantQueue()
    async with instant_bot(fake, database=database, queue=queue):
        pass
    assert queue.submitted == []
    assert statuses(database) == {job_id: "done"}
    assert len(results_of(handle)) == 1


# --- 5 and 6. a job belongs to its server; nothing runs outside one -------------------------------------


async def test_a_button_pressed_in_another_server_does_not_reach_the_job(fake: FakeDiscord) -> None:
    other = fake.add_guild("Another server")
    moderator = other.member(fake.new_id(), "mallory", DEFAULT_PERMISSIONS | MANAGE_MESSAGES)
    async with instant_bot(fake):
        handle = await fake.invoke("imagine", {**IMAGINE, "prompt": "a secret prompt"})
        message = (await wait_for_result(handle)).response
        details = button(message, "details")
        for job_button in (details, details.replace("details", "cancel"), button(message, "reroll")):
            pressed = await fake.press(job_button, user=moderator, guild=other)
            await pressed.wait_for_callback()
            text = refusal(pressed)
            assert "I know no job" in text and "in this server" in text, text
            assert "a secret prompt" not in str(pressed.callbacks[0].json)


async def test_commands_and_buttons_from_a_direct_message_are_refused(fake: FakeDiscord) -> None:
    queue = InstantQueue()
    async with instant_bot(fake, queue=queue):
        handle = await fake.invoke("imagine", IMAGINE)
        message = (await wait_for_result(handle)).response
        for name, options in (("imagine", {**IMAGINE, "steps": 50}), ("compare-steps", {"prompt": "x"}), ("usage", {})):
            dm = await fake.invoke_in_dm(name, options)
            await dm.wait_for_callback()
            assert "only in a server" in refusal(dm)
        pressed = await fake.press(button(message, "reroll"), dm=True)
        await pressed.wait_for_callback()
        assert "only in a server" in refusal(pressed)
    assert len(queue.submitted) == 1


# --- 7. banned words hold however they are spelled, in the prompt and the negative prompt ---------------


@pytest.mark.parametrize(
    ("prompt", "negative_prompt"),
    [
        ("a c\u200bat on a mat", None),
        ("a \u0441at on a mat", None),
        ("a ｃａｔ on a mat", None),
        ("a c.a.t on a mat", None),
        ("a painting of War\u200b  Crimes", None),
        ("a quiet beach", "cat, blurry"),
    ],
)
async def test_banned_words_are_refused_however_they_are_spelled(
    fake: FakeDiscord, database: Database, prompt: str, negative_prompt: str | None
) -> None:
    queue = InstantQueue()
    async with instant_bot(fake, database=database, queue=queue):
        limits = await fake.invoke("limits-set", {"banned_words": "cat, war crimes"}, user=fake.admin)
        await limits.wait_for_callback()
        options = {**IMAGINE, "prompt": prompt}
        if negative_prompt is not None:
            options["negative_prompt"] = negative_prompt
        handle = await fake.invoke("imagine", options)
        await handle.wait_for_callback()
        assert "doesn't allow" in refusal(handle)
    assert queue.submitted == []


# --- 4. while the model loads, jobs wait in the queue ----------------------------------------------------


async def test_a_job_sent_while_the_model_loads_waits_with_its_place_shown_and_then_runs(fake: FakeDiscord) -> None:
    queue = LoadingQueue()
    async with instant_bot(fake, queue=queue):
        first = await fake.invoke("imagine", IMAGINE)
        second = await fake.invoke("imagine", {**IMAGINE, "prompt": "a second one"}, user=fake.admin)
        waiting = await wait_for_progress(second, "position 2")
        assert "The model is still loading" in (content(waiting) or "")
        queue.finish_loading()
        for handle in (first, second):
            await wait_for_result(handle)
    assert [len(results_of(handle)) for handle in (first, second)] == [1, 1]
