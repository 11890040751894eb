"""At most one message edit per interval, always the latest one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

EDIT_INTERVAL = 1.5

MonotonicClock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class ThrottledEditor(Generic[T]):
    """Send the latest of many updates, at most one send per `interval`.

    `push` never waits: it replaces whatever is pending, and a background task sends it when the
    interval allows. Progress sends that fail are logged and dropped; `finish` sends the last
    update in its own slot and lets its errors through.
    """

    def __init__(
        self,
        send: Callable[[T], Awaitable[None]],
        *,
        interval: float = EDIT_INTERVAL,
        clock: MonotonicClock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._pending: list[T] = []  # zero or one item: the latest update not sent yet
        self._last_send: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending = False

    def push(self, update: T) -> None:
        """Make `update` the next thing sent, replacing an older pending one."""
        self._pending[:] = [update]
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        """Drop the pending update; wait for a send in flight to end."""
        self._pending.clear()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if self._sending:
            await task
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def finish(self, update: T) -> None:
        """Drop pending progress and send `update` as the last edit, in its own slot."""
        await self.stop()
        await self._wait_for_slot()
        try:
            await self._send(update)
        finally:
            self._last_send = self._clock()

    async def _wait_for_slot(self) -> None:
        if self._last_send is None:
            return
        delay = self._last_send + self._interval - self._clock()
        if delay > 0:
            await self._sleep(delay)

    async def _flush_loop(self) -> None:
        while self._pending:
            await self._wait_for_slot()
            if not self._pending:
                return
            update = self._pending.pop()
            self._sending = True
            try:
                await self._send(update)
            except Exception:
                log.warning("a progress edit failed; the next one will try again", exc_info=True)
            finally:
                self._sending = False
                self._last_send = self._clock()
