"""The Stepgrid bot: a `commands.AutoShardedBot` whose setup_hook starts the job queue, loads cogs and syncs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Settings, warn_unknown_settings
from bot.errors import report_error
from bot.jobs.core import TOKEN_LIFETIME
from bot.jobs.policy import DatabasePolicy, RequestPolicy, SettingsPolicy
from bot.jobs.recovery import recover_jobs
from bot.jobs.service import JobService
from bot.jobs.takeover import Takeover
from bot.ops.http import EndpointUnavailable, OperatorEndpoint
from bot.ops.metrics import Metrics
from bot.replies.buttons import CellMenu, JobButton
from bot.replies.throttle import EDIT_INTERVAL
from bot.storage.database import Database
from bot.storage.job_store import DatabaseJobStore, JobStore
from bot.storage.lock import DatabaseInUse, bot_lock
from bot.storage.migrate import DatabaseTooNew, DatabaseUnusable
from inference.logs import configure_logging, report_fatal
from inference.models.files import infos_before_loading
from inference.queues.base import JobQueue, WorkerUnavailable
from inference.queues.lease import BotIdInUse, BotLease

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (
    "bot.chat.cogs.imagine",
    "bot.chat.cogs.compare",
    "bot.chat.cogs.compare_schedulers",
    "bot.chat.cogs.compare_strength",
    "bot.chat.cogs.compare_guidance",
    "bot.chat.cogs.limits",
    "bot.chat.cogs.usage",
    "bot.chat.cogs.sweet_spots",
)


class StepgridTree(app_commands.CommandTree["Stepgrid"]):
    """The command tree; its on_error is the one place command errors become replies."""

    async def on_error(self, interaction: discord.Interaction[Stepgrid], error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)

    async def interaction_check(self, interaction: discord.Interaction[Stepgrid], /) -> bool:
        """Every command works only in a server: Discord hides them in DMs, but a client can still send them."""
        if interaction.guild_id is not None:
            return True
        if interaction.type is discord.InteractionType.application_command:
            raise app_commands.NoPrivateMessage()  # answered by on_error
        return False  # an autocomplete from a DM: nothing to suggest


# Discord takes one IDENTIFY per 5 s in each of a bot's `max_concurrency` buckets (shard id % max_concurrency).
IDENTIFY_INTERVAL = 5.0


class Stepgrid(commands.AutoShardedBot):
    """The bot. Everything it talks to can be injected, so tests can run it against fakes.

    Sharded: with STEPGRID_SHARD_COUNT (and STEPGRID_SHARD_IDS) it runs those shards, so that several
    processes can each run a range; without, Discord's recommended count, all in this process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        queue: JobQueue | None = None,
        database: Database | None = None,
        store: JobStore | None = None,
        policy: RequestPolicy | None = None,
        extensions: Sequence[str] = EXTENSIONS,
        sync_commands: bool = True,
        edit_interval: float | None = None,
        token_lifetime: float | None = None,
        **options: object,
    ) -> None:
        # A bot with no voice: discord.py's two warnings about missing voice libraries are noise at every start.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.none()
        intents.guilds = True  # channels and permissions for interactions; no message content
        self.metrics = Metrics()
        options.setdefault("http_trace", self.metrics.discord_trace())
        self.shard_range = settings.shards()
        if self.shard_range is not None:
            options.setdefault("shard_count", self.shard_range.count)
            options.setdefault("shard_ids", list(self.shard_range.ids))
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=StepgridTree,
            help_command=None,
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.queue = queue if queue is not None else default_queue(settings)
        self.database = database
        if database is not None:
            store = store if store is not None else DatabaseJobStore(database)
            policy = policy if policy is not None else DatabasePolicy(database, settings)
        # What the local worker's models can do, from their configs while they load (Redis agents have their own).
        known_models = (
            None if settings.redis_url else infos_before_loading(settings.model_specs(), settings.model_cache_dir)
        )
        self.jobs = JobService(
            self.queue,
            store=store,
            policy=policy if policy is not None else SettingsPolicy(settings),
            edit_interval=EDIT_INTERVAL if edit_interval is None else edit_interval,
            token_lifetime=TOKEN_LIFETIME if token_lifetime is None else token_lifetime,
            metrics=self.metrics,
            known_models=known_models,
        )
        self.endpoint: OperatorEndpoint | None = None
        if settings.http_port is not None:
            self.endpoint = OperatorEndpoint(
                self, settings, jobs=self.jobs, queue=self.queue, metrics=self.metrics, database=database
            )
        self._extensions = tuple(extensions)
        self._sync_commands = sync_commands
        self._ready_watch: asyncio.Task[None] | None = None
        self._queue_started = False
        self._takeover: asyncio.Task[None] | None = None
        self._identify_concurrency: int | None = None
        self._identified_at: dict[int, float] = {}  # rate-limit bucket -> when this process last identified in it
        # Set by `stepgrid run`: stops the process (one line, exit 2) when there is no model to serve.
        self.stop_on_fatal: Callable[[Exception], None] | None = None

    async def setup_hook(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.start()  # first: health checks answer while the model loads
        await self.queue.start()
        self._queue_started = True
        self._ready_watch = asyncio.create_task(self._log_when_ready(), name="stepgrid-wait-ready")
        # Buttons of results posted before a restart still resolve: their custom ids carry the job.
        self.add_dynamic_items(JobButton, CellMenu)
        for extension in self._extensions:
            await self.load_extension(extension)
        if self.database is not None:
            # Jobs a crash left queued or running: logged in now, so their answers can be sent. Processes that
            # share a bot id (no Redis lease) split its jobs by shard: the other shards' processes recover theirs.
            # A bot id held on Redis is this process's alone, so every job it holds is its own to answer, those
            # taken over from a dead process whose servers are on other shards included.
            lease = getattr(self.queue, "lease", None)
            shards = None if isinstance(lease, BotLease) else self.shard_range
            await recover_jobs(self, self.database, self.jobs, shards=shards)
            if isinstance(lease, BotLease):  # several bot processes on one Redis: answer the jobs of dead ones
                takeover = Takeover(self, self.database, self.jobs, lease, on_lost=self.stop_on_fatal)
                self._takeover = asyncio.create_task(takeover.run(), name="stepgrid-takeover")
        if self._sync_commands:
            await self.sync_commands()

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Register the slash commands: to the dev guild (instant) when set, else globally.

        With a database, only when they differ from what was last synced to that scope (every sync
        counts against Discord's daily command limit); `force` syncs anyway. Returns whether it synced.
        """
        guild_id = self.settings.dev_guild_id
        guild = None if guild_id is None else discord.Object(guild_id)
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        scope = f"{self.application_id}/" + ("global" if guild_id is None else f"guild/{guild_id}")
        # What tree.sync sends (the bot has no translator): the same payload hashes the same.
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        syncs = self.database.command_syncs if self.database is not None else None
        if not force and syncs is not None and await syncs.last_synced(scope) == digest:
            log.info("the slash commands are as last synced (%s); not syncing", scope)
            return False
        synced = await self.tree.sync(guild=guild)
        if syncs is not None:
            await syncs.remember(scope, digest)
        if guild_id is not None:
            log.info("synced %d commands to guild %s", len(synced), guild_id)
        else:
            log.info("synced %d commands globally (may take up to an hour to show)", len(synced))
        return True

    async def launch_shards(self) -> None:
        if self.shard_count is None and self.settings.discord_gateway_url:
            # discord.py would connect to the URL /gateway/bot names; the operator's gateway setting comes first.
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        await super().launch_shards()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait only as Discord requires: 5 s between two IDENTIFYs of one rate-limit bucket.

        discord.py waits 5 s before every shard's but the first; a bot with `max_concurrency` 16 may
        start 16 shards at once. A bucket this process has not identified in is not waited for.
        """
        if self._identify_concurrency is None:
            try:
                limits = await self.fetch_session_start_limits()
                self._identify_concurrency = max(1, limits.max_concurrency)
            except (discord.GatewayNotFound, discord.HTTPException, aiohttp.ClientError, OSError):
                self._identify_concurrency = 1
        bucket = (shard_id or 0) % self._identify_concurrency
        last = self._identified_at.get(bucket)
        if last is not None:
            await asyncio.sleep(max(0.0, last + IDENTIFY_INTERVAL - time.monotonic()))
        self._identified_at[bucket] = time.monotonic()

    async def on_ready(self) -> None:
        shards = str(self.shard_range) if self.shard_range is not None else f"{self.shard_count} shard(s)"
        log.info(
            "connected as %s (%s) to %d server(s) on %s",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
            shards,
        )

    async def close(self) -> None:
        """Answer every job, then disconnect.

        No new job is taken and none starts; running jobs have STEPGRID_SHUTDOWN_GRACE_SECONDS to
        finish. With a database, the jobs still waiting or running then stay queued in the ledger and
        the next start runs them (their owners are told so); without one they are answered as stopped.
        """
        if self._ready_watch is not None and self._ready_watch is not asyncio.current_task():
            self._ready_watch.cancel()
        if self._takeover is not None and self._takeover is not asyncio.current_task():
            self._takeover.cancel()
        self.jobs.stop_accepting()
        try:
            if self._queue_started:
                await self.queue.drain(self.settings.shutdown_grace_seconds)
            self.jobs.begin_shutdown(keep_queued=self.database is not None)
            if self._queue_started:
                await self.queue.close()
            await self.jobs.close()
        finally:
            if self.endpoint is not None:
                await self.endpoint.close()
            await super().close()

    async def _log_when_ready(self) -> None:
        try:
            await self.queue.wait_ready()
        except WorkerUnavailable as error:
            # No model loaded and none will (restarting won't help): a bot that stayed up would look healthy
            # to its health check while refusing every command.
            if self.stop_on_fatal is not None:
                self.stop_on_fatal(NoModelToServe(f"no model to serve: {error}"))
            else:
                log.error("the GPU worker could not start (%s); commands will say the model is unavailable", error)
            return
        log.info("the GPU worker is ready")


def default_queue(settings: Settings) -> JobQueue:
    """The local queue with one spawned GPU worker, or with STEPGRID_REDIS_URL the agents behind Redis."""
    from inference.queues.local import LocalJobQueue

    if settings.redis_url:
        from inference.queues.redis import RedisJobQueue

        return RedisJobQueue(
            settings.worker_config(),
            settings.redis_url,
            max_length=settings.queue_max_length,
            bot_id=settings.bot_id,
            lease_seconds=settings.bot_lease_seconds,
        )

    queue: JobQueue = LocalJobQueue(
        settings.worker_config(),
        max_length=settings.queue_max_length,
        hang_seconds=settings.worker_hang_seconds,
    )
    return queue


def point_at_discord(settings: Settings) -> None:
    """Use another Discord API/gateway when configured (a self-hosted proxy, or a fake in tests)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
        log.info("using the Discord API at %s", discord.http.Route.BASE)
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
        log.info("using the Discord gateway at %s", settings.discord_gateway_url)


class TokenError(Exception):
    """The Discord token is missing or was rejected; the message is safe to print."""


class DiscordUnreachable(Exception):
    """Discord (or the configured API base) could not be reached at start-up; the message is safe to print."""


class NoModelToServe(Exception):
    """The GPU worker loaded none of the configured models (or could not start at all); the message says why."""


# What keeps the bot (or `stepgrid sync`) from starting: one line for the operator, exit status 2.
STARTUP_ERRORS = (
    TokenError, DiscordUnreachable, DatabaseTooNew, DatabaseUnusable, DatabaseInUse, NoModelToServe, BotIdInUse,
)  # fmt: skip


def _token(settings: Settings) -> str:
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise TokenError("No Discord token: set STEPGRID_DISCORD_TOKEN in the environment or .env.")
    return settings.discord_token.get_secret_value().strip()


async def _login(bot: Stepgrid, token: str) -> None:
    """Log in (which runs setup_hook); a bad token or an unreachable Discord is the operator's, in one line."""
    try:
        await bot.login(token)
    except discord.LoginFailure:
        raise TokenError("Discord rejected the token in STEPGRID_DISCORD_TOKEN; check it.") from None
    except (aiohttp.ClientError, OSError, TimeoutError, discord.DiscordServerError) as error:
        # Once logged in, discord.py reconnects by itself; a start that never got through is the operator's.
        raise DiscordUnreachable(
            f"cannot reach Discord ({error or type(error).__name__}); check the network."
        ) from None


async def run_bot(settings: Settings, *, queue: JobQueue | None = None) -> None:
    """Start the bot and its worker and run until disconnected. Raises TokenError on a bad token."""
    token = _token(settings)
    # One process per bot id, or both would answer its jobs; with shards, one process per shard.
    with bot_lock(settings, owner=("bot", settings.bot_id), shards=settings.shards()):
        await _run_bot_on(settings, token, queue)


async def _run_bot_on(settings: Settings, token: str, queue: JobQueue | None) -> None:
    database = Database.from_settings(settings)
    await database.start()  # applies migrations; refuses a database newer than this code
    stop = _MainStopper()
    try:
        bot = Stepgrid(settings, queue=queue, database=database)
        bot.stop_on_fatal = stop
        point_at_discord(settings)
        async with bot:
            if bot.endpoint is not None:
                await bot.endpoint.start()  # a port in use is one line before Discord is contacted
            await _login(bot, token)
            await bot.connect()
    except asyncio.CancelledError:
        if not stop.requested:
            raise
        # SIGTERM (docker stop), or no model to serve: `async with bot` has closed the bot gracefully.
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        if stop.error is not None:
            raise stop.error from None
    finally:
        await database.close()


class _CommandSyncer(Stepgrid):
    """The bot's commands without the bot: loads the cogs at login, starts no worker and recovers no job."""

    async def setup_hook(self) -> None:
        for extension in self._extensions:
            await self.load_extension(extension)


async def sync_now(settings: Settings) -> None:
    """`stepgrid sync`: log in, sync the slash commands whatever was last synced, and remember them.

    For when the commands on Discord's side were changed or removed by something else. It never
    connects to the gateway, so it can run beside the bot.
    """
    token = _token(settings)
    database = Database.from_settings(settings)
    await database.start()
    try:
        syncer = _CommandSyncer(settings, database=database, sync_commands=False)
        point_at_discord(settings)
        async with syncer:
            await _login(syncer, token)
            await syncer.sync_commands(force=True)
    finally:
        await database.close()


class _MainStopper:
    """Stops the bot as Ctrl-C does, on SIGTERM or a fatal error (call it with the error): cancels the main
    task, so the bot closes gracefully. `requested` tells a planned stop from another cancellation."""

    def __init__(self) -> None:
        self.requested = False
        self.error: Exception | None = None
        self._main = asyncio.current_task()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        log.info("SIGTERM received: shutting down")
        self(None)

    def __call__(self, error: Exception | None) -> None:
        if self.requested:
            return
        self.requested, self.error = True, error
        if self._main is not None:
            self._main.cancel()


def run(settings: Settings | None = None) -> int:
    """`stepgrid run`: returns the exit status (2 for a missing or rejected token, an unusable database or one
    another bot is using, an HTTP port that can't be listened on, a Discord that can't be reached at start-up, or
    a GPU worker that loaded none of the models)."""
    settings = settings or Settings()
    configure_logging("bot", level=settings.log_level, log_format=settings.log_format)
    warn_unknown_settings()
    try:
        asyncio.run(run_bot(settings))
    except (*STARTUP_ERRORS, EndpointUnavailable) as error:
        report_fatal("bot", "stepgrid", str(error), log_format=settings.log_format)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
