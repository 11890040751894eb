"""A bot process's id on Redis: held by one live process at a time, and taken over once when it dies.

Each bot process holds `<p>:bot:<id>:lease` (its holder's name as the value, a TTL of `seconds`) and
renews it while it runs; the ids that ever ran are in the set `<p>:bots`. A second process started
with an id whose lease is held is refused. A process that stops renewing (kill -9, a vanished host)
loses the lease when its TTL runs out; then any other bot process may *claim* the dead id (`SET NX`:
one claimer wins) and answer that bot's unfinished jobs, and a restart of the dead bot waits for the
claim to end. A process that finds its own lease gone or held by another has been given up by the
others: it must stop answering (its jobs are someone else's now).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import redis.asyncio as aioredis

from inference.queues.wire import Keys

log = logging.getLogger(__name__)

CLAIM_PREFIX = "takeover by "
# Renew the value's TTL only while the value is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# The leases this process holds now (a holder naming this pid but not in here is an earlier life's).
_HELD_HERE: set[str] = set()


class BotIdInUse(RuntimeError):
    """Another live bot process holds this bot id on this Redis; the message says which and what to do."""


def holder_name() -> str:
    """This process, as a lease's value names it: "pid 12 on host (a1b2c3)" (unique per start)."""
    return f"pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})"


def _stale_own(holder: str) -> bool:
    """Whether `holder` was an earlier run of this very process slot: this host, and its pid is gone or is ours
    (a container restarted keeps its host name and pid 1). Its lease is ours to take without waiting."""
    parts = holder.split(" ")
    if len(parts) < 4 or parts[0] != "pid" or parts[2] != "on" or parts[3] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return holder not in _HELD_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class BotLease:
    """This process's hold on its bot id (`acquire`, `renew`, `release`), and claims of dead bots' ids."""

    def __init__(self, client: aioredis.Redis, bot_id: str, *, seconds: float, keys: Keys | None = None) -> None:
        self.client = client
        self.bot_id = bot_id
        self.seconds = seconds
        self.keys = keys or Keys()
        self.holder = holder_name()
        self._renewed_at: float | None = None  # monotonic time the last successful renewal was *sent*
        self.lost = False

    @property
    def _ms(self) -> int:
        return max(1, int(self.seconds * 1000))

    async def acquire(self, *, wait_for_claim: float | None = None) -> None:
        """Take the bot id; BotIdInUse if a live process holds it. A claim by another bot (it is answering this
        bot's jobs after this bot died) is waited out, for at most `wait_for_claim` seconds (default: the lease)."""
        key = self.keys.bot_lease(self.bot_id)
        deadline = time.monotonic() + (self.seconds * 2 if wait_for_claim is None else wait_for_claim)
        while True:
            sent = time.monotonic()
            if await self.client.set(key, self.holder, px=self._ms, nx=True):
                break
            held = await self.client.get(key)
            holder = held.decode(errors="replace") if held is not None else ""
            if holder and _stale_own(holder):
                # This slot's previous run (kill -9, then restarted at once): its jobs are ours to finish.
                if await self.client.set(key, self.holder, px=self._ms, xx=True, get=True) == held:
                    break
                continue
            if holder.startswith(CLAIM_PREFIX) and time.monotonic() < deadline:
                await asyncio.sleep(min(0.5, self.seconds / 4))  # another bot is adopting our jobs: they move once
                continue
            if holder:
                raise BotIdInUse(
                    f"another Stepgrid bot process ({holder}) runs as bot id {self.bot_id!r} on this Redis: "
                    "stop it, or give each process its own STEPGRID_BOT_ID (the same one after every restart)"
                )
        self._renewed_at = sent
        self.lost = False
        _HELD_HERE.add(self.holder)
        await self.client.sadd(self.keys.bots, self.bot_id)  # type: ignore[misc]
        log.info("bot id %r held on Redis (renewed every %.1f s)", self.bot_id, self.seconds / 3)

    async def renew(self) -> bool:
        """Renew the lease; False (and `lost` set for good) when it is gone or held by another process."""
        if self.lost:
            return False
        sent = time.monotonic()
        renewed = await self.client.eval(_RENEW, 1, self.keys.bot_lease(self.bot_id), self.holder, self._ms)  # type: ignore[misc]
        if renewed:
            self._renewed_at = sent
            return True
        self.lost = True
        _HELD_HERE.discard(self.holder)
        log.error(
            "this process lost its bot id %r on Redis (it was not renewed for %.0f s, and another process may "
            "be answering its jobs now)",
            self.bot_id,
            self.seconds,
        )
        return False

    @property
    def fresh(self) -> bool:
        """Whether this process surely still holds its id: renewed within the last 80% of the lease."""
        return (
            not self.lost and self._renewed_at is not None and time.monotonic() - self._renewed_at < self.seconds * 0.8
        )

    async def release(self) -> None:
        """Give the id back (a clean stop), so that a restart takes it at once."""
        _HELD_HERE.discard(self.holder)
        await self.client.eval(_DROP, 1, self.keys.bot_lease(self.bot_id), self.holder)  # type: ignore[misc]

    async def dead_bots(self) -> list[str]:
        """The other bot ids on this Redis that no process holds now."""
        ids = sorted(item.decode() for item in await self.client.smembers(self.keys.bots))  # type: ignore[misc]
        others = [bot_id for bot_id in ids if bot_id != self.bot_id]
        if not others:
            return []
        held = await self.client.exists(*[self.keys.bot_lease(bot_id) for bot_id in others])
        if held == len(others):
            return []
        return [bot_id for bot_id in others if not await self.client.exists(self.keys.bot_lease(bot_id))]

    def _claim_value(self) -> str:
        return f"{CLAIM_PREFIX}{self.bot_id} ({self.holder})"

    async def claim(self, dead: str) -> bool:
        """Claim a dead bot's id (one claimer wins, atomically); True if this process is to answer its jobs."""
        claimed = await self.client.set(self.keys.bot_lease(dead), self._claim_value(), px=self._ms, nx=True)
        return bool(claimed)

    async def renew_claim(self, dead: str) -> bool:
        """Keep a claim while its jobs are being adopted."""
        value = self._claim_value()
        return bool(await self.client.eval(_RENEW, 1, self.keys.bot_lease(dead), value, self._ms))  # type: ignore[misc]

    async def end_claim(self, dead: str) -> None:
        """The dead bot's jobs are this process's now: forget its id (its restart adds it back) and drop the claim."""
        await self.client.srem(self.keys.bots, dead)  # type: ignore[misc]
        await self.client.eval(_DROP, 1, self.keys.bot_lease(dead), self._claim_value())  # type: ignore[misc]
