"""The operator's HTTP endpoint in the bot process (aiohttp.web): health, readiness, metrics, a status page.

Off unless STEPGRID_HTTP_PORT is set; bound to STEPGRID_HTTP_BIND (127.0.0.1 by default). Read-only:
nothing here changes the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import KW_ONLY, dataclass
from datetime import timedelta
from typing import Protocol

import discord
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.formatting import eta_words
from bot.ops.metrics import CONTENT_TYPE, LiveFigures, Metrics, ShardFigures
from bot.ops.status_page import (
    HOURS,
    HourFigures,
    JobLine,
    ModelLine,
    ShardLine,
    StatusView,
    last_hours,
    status_html,
)
from bot.storage.database import Database
from bot.storage.models import JobRow, utcnow
from inference.queues.base import JobQueue

log = logging.getLogger(__name__)


class JobCounts(Protocol):
    """What the endpoint reads of the job service (bot.jobs sits above the operator's surface)."""

    @property
    def active_jobs(self) -> frozenset[str]: ...

    def waiting_jobs(self) -> int: ...

    def steps_of(self, job_id: str) -> tuple[int, int] | None: ...


HEALTH_WRITE_TIMEOUT = 5.0  # seconds the database may take to accept the health check's write


class EndpointUnavailable(Exception):
    """The endpoint can't listen where the settings say; the message is one line for the operator."""


@dataclass(eq=False)
class OperatorEndpoint:
    """`/healthz`, `/readyz`, `/metrics` and `/` for one bot; `start()` listens, `close()` stops."""

    client: discord.Client
    settings: Settings
    _: KW_ONLY
    jobs: JobCounts
    queue: JobQueue
    metrics: Metrics
    database: Database | None

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_page),
                web.get("/", self.status_page),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self.metrics.watch(self.live_figures)

    async def start(self) -> None:
        """Listen on the configured address; EndpointUnavailable (one line) if it can't."""
        if self._runner is not None:
            return
        host, port = self.settings.http_bind, self.settings.http_port
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            raise EndpointUnavailable(
                f"cannot serve the HTTP endpoint on {host}:{port} ({error.strerror or error}); "
                "set STEPGRID_HTTP_PORT to a free port, or leave it empty to turn the endpoint off."
            ) from None
        self._runner = runner
        self._lag_watch = asyncio.create_task(self.metrics.watch_loop_lag(), name="stepgrid-loop-lag")
        log.info("HTTP endpoint on http://%s:%s/ (healthz, readyz, metrics, status page)", host, port)

    async def close(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_watch
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what the handlers read ---------------------------------------------------------------

    def live_figures(self) -> LiveFigures:
        active = len(self.jobs.active_jobs)
        waiting = self.jobs.waiting_jobs()
        return LiveFigures(
            queued=waiting,
            running=active - waiting,
            models_ready=len(self.queue.models),
            worker_restarts=sum(worker.restarts for worker in self.queue.workers()),
            ready=not self.why_not_ready(),
            shards=self.shard_figures(),
        )

    def shard_figures(self) -> tuple[ShardFigures, ...]:
        """The gateway shards this process runs, by id (none before it connects)."""
        client = self.client
        if not isinstance(client, discord.AutoShardedClient):
            return ()
        servers: dict[int | None, int] = {}
        for guild in client.guilds:
            servers[guild.shard_id] = servers.get(guild.shard_id, 0) + 1
        return tuple(
            ShardFigures(shard_id, not shard.is_closed(), shard.latency, servers.get(shard_id, 0))
            for shard_id, shard in sorted(client.shards.items())
        )

    def connected(self) -> bool:
        """Logged in to Discord with a live gateway connection (sharded: every shard of this process's open)."""
        client = self.client
        if isinstance(client, discord.AutoShardedClient):
            shards = client.shards.values()
            return (
                client.is_ready()
                and not client.is_closed()
                and bool(shards)
                and all(not shard.is_closed() for shard in shards)
            )
        return client.is_ready() and not client.is_closed() and client.ws is not None and client.ws.open

    def why_not_ready(self) -> list[str]:
        reasons = []
        if not self.connected():
            reasons.append("not connected to Discord")
        if self.queue.connection_problem:
            reasons.append(self.queue.connection_problem)
        if self.queue.unavailable:
            reasons.append(f"no model can load: {self.queue.unavailable}")
        elif not self.queue.models:
            unusable = [worker for worker in self.queue.workers() if worker.state == "unusable"]
            loading = "no model is ready yet (loading)"
            reasons.append(f"no model is ready: {unusable[0].name} {unusable[0].detail}" if unusable else loading)
        else:
            # The models a worker loaded stay known while it restarts after a crash (commands are still
            # accepted and wait for it), but nothing can run until a worker is back.
            states = [worker.state for worker in self.queue.workers()]
            if states and "ready" not in states:
                reasons.append(f"no GPU worker is ready ({', '.join(sorted(set(states)))})")
        return reasons

    async def database_problem(self) -> str | None:
        """None if the database takes a write within HEALTH_WRITE_TIMEOUT, else what is wrong."""
        if self.database is None:
            return None
        try:
            await asyncio.wait_for(self.database.write(_write_probe), HEALTH_WRITE_TIMEOUT)
        except TimeoutError:
            return f"the database took no write within {HEALTH_WRITE_TIMEOUT:g}s"
        except Exception as error:
            return f"the database is not writable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        return None

    # --- handlers -----------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the event loop answers and the database takes writes; 503 with why otherwise."""
        problem = await self.database_problem()
        if problem is not None:
            return web.json_response({"status": "unhealthy", "problem": problem}, status=503)
        return web.json_response({"status": "ok", "database": "none" if self.database is None else "writable"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 once connected to Discord with at least one model ready; 503 with the reasons otherwise."""
        reasons = self.why_not_ready()
        body = {"ready": not reasons, "reasons": reasons, "models": list(self.queue.models)}
        return web.json_response(body, status=503 if reasons else 200)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def status_page(self, request: web.Request) -> web.Response:
        return web.Response(text=status_html(await self.status_view()), content_type="text/html")

    async def status_view(self) -> StatusView:
        """What the status page shows, read now."""
        now = utcnow()
        user = self.client.user
        discord_line = (
            f"connected to Discord as {user} in {len(self.client.guilds)} server(s)"
            if self.connected()
            else "not connected to Discord"
        )
        shards = [
            ShardLine(s.shard_id, "connected" if s.connected else "closed", s.latency, s.servers)
            for s in self.shard_figures()
        ]
        models = [ModelLine(name, "ready", info.family) for name, info in self.queue.models.items()]
        models += [ModelLine(name, "unavailable", why.message) for name, why in self.queue.unavailable_models.items()]
        jobs: list[JobLine] = []
        hours: list[HourFigures] = []
        withheld = 0
        if self.database is not None:
            withheld = await self.database.ledger.images_withheld(since=now - timedelta(hours=HOURS), until=now)
            jobs = [self._job_line(row) for row in await self.database.ledger.unfinished_jobs()]
            activity = await self.database.ledger.hourly_activity(since=now - timedelta(hours=HOURS), until=now)
            hours = [HourFigures(a.hour, a.jobs, a.steps, a.mean_wait) for a in activity]
        return StatusView(
            now=now,
            discord=discord_line,
            ready=not self.why_not_ready(),
            models=models,
            workers=self.queue.workers(),
            jobs=jobs,
            hours=last_hours(now, {figures.hour: figures for figures in hours}),
            images_withheld=withheld,
            shards=shards,
        )

    def _job_line(self, row: JobRow) -> JobLine:
        position = self.queue.position(row.id)
        status = (
            f"queued (#{position})" if position is not None else _running_status(row.status, self.jobs.steps_of(row.id))
        )
        status += eta_words(self.queue.estimate(row.id), waiting=position is not None)  # "" before a measurement
        guild = self.client.get_guild(row.guild_id) if row.guild_id is not None else None
        return JobLine(
            job_id=row.id,
            command=row.command,
            model=row.model or "default",
            status=status,
            server=guild.name if guild is not None else str(row.guild_id),
            accepted_at=row.created_at,
            prompt=str(row.params.get("prompt", "")) if self.settings.status_show_prompts else None,
        )


def _running_status(status: str, steps: tuple[int, int] | None) -> str:
    """ "running · step 12/30" once its progress is known."""
    return f"{status} · step {steps[0]}/{steps[1]}" if status == "running" and steps is not None else status


async def _write_probe(session: AsyncSession) -> None:
    # A write that changes nothing still needs SQLite's write lock: it fails on a read-only or locked file.
    await session.execute(sa.update(JobRow).where(sa.false()).values(id=JobRow.id))
