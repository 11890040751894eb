"""The SQLite database: migrations at start-up, one writer task, and the few queries the bot needs.

Every write goes through one asyncio queue consumed by a single task, so SQLite never sees two
writers at once (no "database is locked", however many interactions arrive together). Reads open
their own sessions; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import migrations
from bot.config import Settings
from bot.errors import UserFacingError
from bot.limits import LIMIT_FIELDS, ServerLimits, day_start, next_quota_reset, validate_limit_changes
from bot.models import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    GuildLimits,
    Job,
    JobStatus,
    LimitsChange,
    command_of,
    in_guild,
    request_to_params,
    utcnow,
)
from inference.protocol import JobFailed, JobResult, Request, total_steps

log = logging.getLogger(__name__)

T = TypeVar("T")
WallClock = Callable[[], datetime]

BUSY_TIMEOUT_MS = 10_000


class DatabaseTooNew(RuntimeError):
    """The database was migrated by a newer Stepgrid than this one; refusing to touch it."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"This database was written by a newer Stepgrid (revision {revision}); "
            "upgrade Stepgrid or point STEPGRID_DATABASE_PATH at another file."
        )
        self.revision = revision


class LedgerJobMissing(LookupError):
    """No job with that id in the ledger."""


# --- migrations --------------------------------------------------------------------------------


def migrations_folder() -> Path:
    """The installed `migrations` package (env.py, versions/)."""
    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` that needs no alembic.ini (works from an installed package)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def sqlite_url(path: Path | str, *, driver: str = "") -> str:
    """`sqlite:///path` (or `sqlite+aiosqlite:///path` with driver="aiosqlite")."""
    scheme = f"sqlite+{driver}" if driver else "sqlite"
    return f"{scheme}:///{Path(path).expanduser()}"


def database_revisions(path: Path | str) -> tuple[str, ...]:
    """The Alembic revision(s) a database file is at; empty for a new file."""
    if not Path(path).exists():
        return ()
    engine = sa.create_engine(sqlite_url(path), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def check_revision(path: Path | str) -> None:
    """Raise DatabaseTooNew if the database is at a revision this code doesn't know."""
    scripts = ScriptDirectory.from_config(alembic_config(sqlite_url(path)))
    for revision in database_revisions(path):
        try:
            known = scripts.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            raise DatabaseTooNew(revision)


def upgrade_database(path: Path | str, revision: str = "head") -> None:
    """Create the database's folder if missing and apply the migrations (`alembic upgrade head`).

    Blocking: from async code, run it with `asyncio.to_thread` (Database.start does).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    check_revision(path)
    log.info("applying database migrations to %s", path)
    command.upgrade(alembic_config(sqlite_url(path)), revision)


# --- the database -------------------------------------------------------------------------------


@dataclass
class _Write:
    operation: Callable[[AsyncSession], Awaitable[Any]]
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Database:
    """The bot's database: call `start()` (migrates, starts the writer), then the methods below."""

    def __init__(self, path: Path | str, settings: Settings | None = None, *, clock: WallClock = utcnow) -> None:
        self.path = Path(path).expanduser()
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        self.engine: AsyncEngine = create_async_engine(sqlite_url(self.path, driver="aiosqlite"))
        event.listen(self.engine.sync_engine, "connect", _configure_connection)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self, *, upgrade: bool = True) -> None:
        """Apply migrations (unless told not to) and start the writer task."""
        if self._writer is not None:
            raise RuntimeError("Database already started")
        if upgrade:
            await asyncio.to_thread(upgrade_database, self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(check_revision, self.path)
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="stepgrid-db-writer")

    async def close(self) -> None:
        """Finish the writes already queued, stop the writer, close every connection."""
        if self._writer is not None:
            self._closing = True
            await self._writes.put(None)
            await self._writer
            self._writer = None
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the writer ---------------------------------------------------------------------------

    async def write(self, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `operation` in its own transaction on the writer task; returns its result or raises its error."""
        if self._writer is None or self._writer.done() or self._closing:
            raise RuntimeError("the database is not running (call start() first)")
        item = _Write(operation)
        await self._writes.put(item)
        # Shielded: a caller cancelled mid-write must not leave the writer's result unread, and the
        # write itself still happens (a job accepted is a job recorded).
        result: T = await asyncio.shield(item.done)
        return result

    async def _write_loop(self) -> None:
        while (item := await self._writes.get()) is not None:
            try:
                async with self.sessions() as session, session.begin():
                    result = await item.operation(session)
            except Exception as error:
                if not item.done.cancelled():
                    item.done.set_exception(error)
                # Errors raised on purpose (bad input, unknown job) are the caller's to handle.
                if not isinstance(error, UserFacingError | LedgerJobMissing):
                    log.exception("database write failed")
            else:
                if not item.done.cancelled():
                    item.done.set_result(result)

    # --- jobs -----------------------------------------------------------------------------------

    async def record_job(
        self,
        request: Request,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        job_id: str | None = None,
        application_id: int | None = None,
        interaction_token: str | None = None,
        message_id: int | None = None,
        origin: str | None = None,
        parent_job_id: str | None = None,
    ) -> Job:
        """Record an accepted request as a queued job (before it is submitted to the queue).

        `origin` says what started it (the command, or a button action on `parent_job_id`'s result).
        """
        job = Job(
            id=job_id or uuid.uuid4().hex,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            command=command_of(request),
            params=request_to_params(request),
            scheduler=request.scheduler,
            images=len(request.lane_steps),
            steps_requested=total_steps(request),
            status=JobStatus.QUEUED.value,
            attempts=0,
            created_at=self.clock(),
            application_id=application_id,
            interaction_token=interaction_token,
            message_id=message_id,
            message_channel_id=channel_id if message_id is not None else None,
            origin=origin or command_of(request),
            parent_job_id=parent_job_id,
        )

        async def insert(session: AsyncSession) -> Job:
            session.add(job)
            return job

        return await self.write(insert)

    async def mark_running(self, job_id: str) -> bool:
        """queued → running; counts an attempt. False (and no change) if the job already finished.

        Call it once per bot run that starts the job: `attempts` counts how many runs of the bot
        started it, which start-up recovery reads as how many times the bot went down during it.
        """
        now = self.clock()

        def change(job: Job) -> None:
            job.status = JobStatus.RUNNING.value
            job.attempts += 1
            if job.started_at is None:
                job.started_at = now

        return await self._transition(job_id, change)

    async def mark_queued(self, job_id: str) -> bool:
        """running → queued again, e.g. re-queued at start-up after a crash; keeps its attempts."""
        return await self._transition(job_id, lambda job: setattr(job, "status", JobStatus.QUEUED.value))

    async def mark_done(self, job_id: str, *, gpu_seconds: float, queue_seconds: float, steps_run: int) -> bool:
        """Finished with a result. False (and no change) if the job had already finished."""
        return await self._finish(
            job_id, JobStatus.DONE, gpu_seconds=gpu_seconds, queue_seconds=queue_seconds, steps_run=steps_run
        )

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> bool:
        """Record a job's final event: done, failed or cancelled, with what it used (steps, GPU and queue time).

        Failed and cancelled jobs keep the steps they ran, so a job cancelled after 149 of 150 steps
        counts 149 toward the daily quota. False (and no change) if the job had already finished.
        """
        figures: dict[str, Any] = {
            "gpu_seconds": outcome.gpu_seconds,
            "queue_seconds": outcome.queue_seconds,
            "steps_run": outcome.steps_run,
        }
        if isinstance(outcome, JobResult):
            return await self._finish(job_id, JobStatus.DONE, **figures)
        if outcome.cancelled:
            return await self._finish(job_id, JobStatus.CANCELLED, **figures)
        return await self._finish(job_id, JobStatus.FAILED, error=outcome.message, **figures)

    async def set_message(
        self,
        job_id: str,
        *,
        message_id: int | None,
        channel_id: int | None = None,
        interaction_token: str | None = None,
        application_id: int | None = None,
    ) -> None:
        """Remember the message that shows this job (and a newer interaction to answer through)."""

        def change(job: Job) -> None:
            job.message_id = message_id
            job.message_channel_id = channel_id if channel_id is not None else job.channel_id
            if interaction_token is not None:
                job.interaction_token = interaction_token
            if application_id is not None:
                job.application_id = application_id

        await self._update(job_id, change)

    async def get_job(self, job_id: str) -> Job | None:
        """The job with that id, or None."""
        async with self.sessions() as session:
            return await session.get(Job, job_id)

    async def unfinished_jobs(self) -> list[Job]:
        """Jobs left queued or running (by a crash, at start-up), oldest first."""
        statuses = [status.value for status in UNFINISHED_STATUSES]
        async with self.sessions() as session:
            rows = await session.scalars(
                sa.select(Job).where(Job.status.in_(statuses)).order_by(Job.created_at, Job.id)
            )
            return list(rows)

    async def steps_used_today(self, guild_id: int | None, user_id: int, *, now: datetime | None = None) -> int:
        """Steps counted against the member's daily quota since midnight UTC.

        Finished jobs count the steps that actually ran; queued and running jobs count the steps
        they asked for, so that queuing many jobs at once can't go past the quota.
        """
        now = now or self.clock()
        since, until = day_start(now), next_quota_reset(now)
        unfinished = [status.value for status in UNFINISHED_STATUSES]
        counted = sa.case(
            (Job.status.in_(unfinished), Job.steps_requested),
            else_=sa.func.coalesce(Job.steps_run, 0),
        )
        query = sa.select(sa.func.coalesce(sa.func.sum(counted), 0)).where(
            in_guild(guild_id), Job.user_id == user_id, Job.created_at >= since, Job.created_at < until
        )
        async with self.sessions() as session:
            return int(await session.scalar(query) or 0)

    async def active_jobs(self, guild_id: int | None, user_id: int) -> int:
        """How many of the member's jobs are queued or running."""
        unfinished = [status.value for status in UNFINISHED_STATUSES]
        query = sa.select(sa.func.count()).where(in_guild(guild_id), Job.user_id == user_id, Job.status.in_(unfinished))
        async with self.sessions() as session:
            return int(await session.scalar(query) or 0)

    async def _transition(self, job_id: str, change: Callable[[Job], None]) -> bool:
        async def operation(session: AsyncSession) -> bool:
            job = await _load(session, job_id)
            if job.status in FINISHED_STATUSES:
                log.info("job %s is already %s; ignoring a late status change", job_id, job.status)
                return False
            change(job)
            return True

        return await self.write(operation)

    async def _finish(self, job_id: str, status: JobStatus, error: str | None = None, **figures: Any) -> bool:
        now = self.clock()

        def change(job: Job) -> None:
            job.status = status.value
            job.finished_at = now
            # Only start-up recovery answers through the stored interaction, and only unfinished
            # jobs; buttons arrive as new interactions. A finished job keeps no token (privacy).
            job.interaction_token = None
            if error is not None:
                job.error = error
            for name, value in figures.items():
                if value is not None:
                    setattr(job, name, value)

        return await self._transition(job_id, change)

    async def _update(self, job_id: str, change: Callable[[Job], None]) -> None:
        async def operation(session: AsyncSession) -> None:
            change(await _load(session, job_id))

        await self.write(operation)

    # --- limits ---------------------------------------------------------------------------------

    async def get_limits(self, guild_id: int) -> ServerLimits:
        """The server's own limits (all None when it never set any)."""
        async with self.sessions() as session:
            return _server_limits(await session.get(GuildLimits, guild_id))

    async def set_limits(self, guild_id: int, user_id: int, **changes: Any) -> ServerLimits:
        """Validate and apply `/limits set` changes, one audit row per field that changed.

        Raises InvalidLimit (a UserFacingError) naming the field and allowed range; then nothing changes.
        """
        now = self.clock()

        async def operation(session: AsyncSession) -> ServerLimits:
            row = await session.get(GuildLimits, guild_id)
            # Validated inside the writer's transaction, so two admins can't interleave.
            normalised = validate_limit_changes(changes, _server_limits(row), self.settings)
            return await _apply_limits(session, row, guild_id, user_id, normalised, now)

        return await self.write(operation)

    async def reset_limits(self, guild_id: int, user_id: int, fields: Iterable[str] | None = None) -> ServerLimits:
        """Put `fields` (default: all) back to the operator's values; audited like `set_limits`."""
        names = tuple(fields) if fields is not None else LIMIT_FIELDS
        return await self.set_limits(guild_id, user_id, **dict.fromkeys(names))

    async def limits_history(self, guild_id: int, *, limit: int = 50) -> list[LimitsChange]:
        """The server's most recent limit changes, newest first."""
        query = (
            sa.select(LimitsChange)
            .where(LimitsChange.guild_id == guild_id)
            .order_by(LimitsChange.changed_at.desc(), LimitsChange.id.desc())
            .limit(limit)
        )
        async with self.sessions() as session:
            return list(await session.scalars(query))


def _configure_connection(dbapi_connection: Any, connection_record: Any) -> None:
    """Pragmas for every new connection: WAL, wait instead of failing when busy, enforce foreign keys."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses no committed data
    finally:
        cursor.close()


async def _load(session: AsyncSession, job_id: str) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise LedgerJobMissing(job_id)
    return job


def _server_limits(row: GuildLimits | None) -> ServerLimits:
    if row is None:
        return ServerLimits()
    values = {name: getattr(row, name) for name in LIMIT_FIELDS}
    for name in ("allowed_schedulers", "banned_words"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    return ServerLimits(**values)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


async def _apply_limits(
    session: AsyncSession,
    row: GuildLimits | None,
    guild_id: int,
    user_id: int,
    changes: dict[str, Any],
    now: datetime,
) -> ServerLimits:
    if row is None:
        row = GuildLimits(guild_id=guild_id)
        session.add(row)
        await session.flush()  # the audit rows reference it
    for name, new in changes.items():
        old = getattr(row, name)
        new = _json_value(new)
        if old == new:
            continue
        setattr(row, name, new)
        session.add(
            LimitsChange(guild_id=guild_id, user_id=user_id, field=name, old_value=old, new_value=new, changed_at=now)
        )
        row.updated_at = now
        row.updated_by = user_id
    return _server_limits(row)
