"""Answering a dead bot process's jobs: several bot processes on one Redis and one ledger (docs/scaling.md).

Every bot process holds its bot id on Redis with a lease (`inference.queues.lease`). When a process
stops renewing its lease (kill -9, a vanished host) and the lease runs out, one of the others claims
the dead id (atomically: one claimer wins), moves the dead bot's unfinished rows in the ledger to
itself (one UPDATE: each row moves once), and answers them as start-up recovery would: their results
wait in Redis under their job ids, so a job that was running finishes once, not twice. A restart of
the dead bot waits for the claim to end and then finds nothing of its own left to recover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from bot.jobs.recovery import recover_jobs
from inference.queues.lease import BotIdInUse, BotLease

if TYPE_CHECKING:
    import discord

    from bot.jobs.service import JobService
    from bot.storage.database import Database

log = logging.getLogger(__name__)


class Takeover:
    """Watches the other bot ids on Redis; takes over the jobs of each one that died."""

    def __init__(
        self,
        client: discord.Client,
        database: Database,
        jobs: JobService,
        lease: BotLease,
        *,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        self.client = client
        self.database = database
        self.jobs = jobs
        self.lease = lease
        self.on_lost = on_lost

    async def run(self) -> None:
        """Look every third of a lease, until cancelled; stop the bot (`on_lost`) if this process lost its own id."""
        while True:
            if self.lease.lost:
                if self.on_lost is not None:
                    self.on_lost(
                        BotIdInUse(
                            f"this process lost its bot id {self.lease.bot_id!r} on Redis (not renewed in time); "
                            "another process answers its jobs now, so it stops: restart it"
                        )
                    )
                return
            try:
                await self.once()
            except (RedisError, OSError) as error:
                log.warning("could not look for dead bot processes on Redis (%s); trying again", error)
            except Exception:
                log.exception("unexpected error while looking for dead bot processes")
            await asyncio.sleep(self.lease.seconds / 3)

    async def once(self) -> list[str]:
        """Take over the unfinished jobs of every dead bot id that this process wins the claim of; their ids."""
        if not self.lease.fresh:
            return []  # a process not sure of its own id takes no other's
        adopted: list[str] = []
        for dead in await self.lease.dead_bots():
            if not await self.lease.claim(dead):
                continue  # another live process won it, or the dead bot is back
            try:
                rows = await self.database.ledger.adopt_jobs(dead)
                if rows:
                    log.warning(
                        "bot process %r stopped renewing its id: this process (%r) answers its %d unfinished job(s)",
                        dead,
                        self.lease.bot_id,
                        len(rows),
                    )
                    await recover_jobs(self.client, self.database, self.jobs, rows=rows)
                adopted += [row.id for row in rows]
            finally:
                await self.lease.end_claim(dead)
        return adopted
