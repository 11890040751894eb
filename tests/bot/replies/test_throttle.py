"""ThrottledEditor: the latest of many updates, at most one send per interval."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from bot.replies.throttle import ThrottledEditor
from tests.bot.fakes import WAIT, FakeClock, http_error

T = TypeVar("T")


class IdleEditor(ThrottledEditor[T]):
    """A ThrottledEditor a test can wait on until everything pushed has been sent."""

    async def idle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


async def test_editor_sends_the_first_update_at_once() -> None:
    clock = FakeClock()
    sent: list[str] = []

    async def send(update: str) -> None:
        sent.append(update)

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("queued")
    await editor.idle()
    assert sent == ["queued"]
    assert clock.sleeps == []


def timed_editor() -> tuple[IdleEditor[str], list[tuple[str, float]]]:
    """An editor on a fake clock (interval 1.5 s), and the (update, time) of every send it makes."""
    clock = FakeClock()
    sent: list[tuple[str, float]] = []

    async def send(update: str) -> None:
        sent.append((update, clock()))

    return IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep), sent


async def test_editor_coalesces_a_burst_into_the_latest_update() -> None:
    editor, sent = timed_editor()
    editor.push("first")
    await editor.idle()
    for step in range(1, 11):
        editor.push(f"step {step}")
    await editor.idle()
    assert [update for update, _ in sent] == ["first", "step 10"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_keeps_edits_an_interval_apart_while_a_send_is_slow() -> None:
    clock = FakeClock()
    sent: list[tuple[str, float]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def send(update: str) -> None:
        if update == "a":
            started.set()
            await release.wait()
        sent.append((update, clock()))

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("a")
    async with asyncio.timeout(WAIT):
        await started.wait()
    editor.push("b")
    editor.push("c")
    release.set()
    await editor.idle()
    assert [update for update, _ in sent] == ["a", "c"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_finish_drops_pending_progress_and_waits_for_its_slot() -> None:
    editor, sent = timed_editor()
    editor.push("step 1")
    await editor.idle()
    editor.push("step 2")
    await editor.finish("result")
    assert [update for update, _ in sent] == ["step 1", "result"]
    assert sent[1][1] - sent[0][1] >= 1.5


async def test_editor_survives_a_failed_progress_edit() -> None:
    clock = FakeClock()
    sent: list[str] = []

    async def send(update: str) -> None:
        if update == "bad":
            raise http_error(500, 0, "Internal Server Error")
        sent.append(update)

    editor = IdleEditor(send, interval=1.5, clock=clock, sleep=clock.sleep)
    editor.push("bad")
    await editor.idle()
    editor.push("good")
    await editor.idle()
    assert sent == ["good"]


# --- accepting a request ----------------------------------------------------------------------
