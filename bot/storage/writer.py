"""The SQLite connection and its one writer task: what the ledger and the limit storage write through.

Every write goes through one asyncio queue consumed by a single task, so SQLite never sees two
writers at once (no "database is locked", however many interactions arrive together). Reads open
their own sessions and wait (busy_timeout) for the moment a write commits.

The journal is a rollback journal (TRUNCATE), not WAL, and nothing is memory-mapped: WAL keeps its
index in a memory-mapped `-shm` file, and when the disk under it goes read-only (remounted after
I/O errors) or fills, touching that mapping kills the whole process with SIGBUS: no job is answered
and nothing can be logged. Without a mapping, the same fault is an ordinary error from the write
that met it (the job driver retries its final write; see `JobService`). WAL's gain, reads running
during a commit, is worth little here: one writer, a handful of small reads per command.

Group commit: the writes waiting in the queue when the writer takes one (up to MAX_GROUP) run in one
transaction, so one commit (one round of fsyncs) serves them all; a busy bot's writes no longer
queue behind each other's fsyncs (measured with benchmarks/bench_load.py: at 20 commands a second on
the 2-core box, a write waited 12 s in the queue, and acknowledgements came 16 s late). Each write's
caller hears of it only once it is committed. If one of them raises, the group is rolled back and
each write of it runs again alone in its own transaction, as before: one write's error never undoes
or fails another's.

On PostgreSQL (a `url`: STEPGRID_DATABASE_URL) the same writer task serialises this process's
writes; the server takes care of other processes, and the ledger locks the rows it changes
(`SELECT ... FOR UPDATE`), so a status change read-then-written is exactly once across processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from bot.config import Settings
from bot.errors import DatabaseBusy, UserFacingError
from bot.storage.migrate import check_revision, sqlite_url, upgrade_database
from bot.storage.models import utcnow
from bot.storage.postgres import check_server_revision, upgrade_server_database

log = logging.getLogger(__name__)

T = TypeVar("T")
WallClock = Callable[[], datetime]

BUSY_TIMEOUT_MS = 10_000
MAX_GROUP = 64  # writes committed together at most
JOURNAL_MODE = "truncate"


@dataclass
class _Write:
    operation: Callable[[AsyncSession], Awaitable[Any]]
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RefusedWrite(Exception):
    """Raised on purpose by a write (an unknown row, say): the caller's to handle, not logged as a failure."""


class DatabaseWriter:
    """A SQLite file, or with `url` a PostgreSQL database: call `start()` (migrates, starts the writer), then
    `write` and `sessions`. With a `url`, `path` only names the data folder (its parent)."""

    def __init__(
        self,
        path: Path | str,
        settings: Settings | None = None,
        *,
        clock: WallClock = utcnow,
        url: str | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.url = url
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        if url is None:
            self.engine: AsyncEngine = create_async_engine(sqlite_url(self.path, driver="aiosqlite"))
            event.listen(self.engine.sync_engine, "connect", _configure_connection)
        else:
            # pre_ping: a connection the server dropped (a restart, a failover) is replaced, not used. Sized from
            # the settings: every command reads the ledger, and with more at once than connections they queue
            # for one (up to the pool's timeout, then DatabaseBusy: one line, not "something went wrong").
            self.engine = create_async_engine(
                url,
                pool_pre_ping=True,
                poolclass=QueueingPool,
                pool_size=self.settings.database_pool_size,
                max_overflow=0,
                pool_timeout=self.settings.database_pool_timeout,
            )
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writes: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self, *, upgrade: bool = True) -> None:
        """Apply migrations (unless told not to) and start the writer task."""
        if self._writer is not None:
            raise RuntimeError("Database already started")
        if self.url is not None:
            await asyncio.to_thread(upgrade_server_database if upgrade else check_server_revision, self.url)
        elif upgrade:
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

    async def __aenter__(self) -> Self:
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
        stop = False
        while not stop and (item := await self._writes.get()) is not None:
            group = [item]
            while len(group) < MAX_GROUP and not self._writes.empty():
                queued = self._writes.get_nowait()
                if queued is None:
                    stop = True  # close(): this group is the last
                    break
                group.append(queued)
            if len(group) == 1 or not await self._commit_together(group):
                for write in group:
                    await self._commit_alone(write)

    async def _commit_together(self, group: list[_Write]) -> bool:
        """Run the group's writes in one transaction; False (nothing kept, no caller told) if any raised."""
        results = []
        try:
            async with self.sessions() as session, session.begin():
                for write in group:
                    results.append(await write.operation(session))
        except Exception:
            return False
        for write, result in zip(group, results, strict=True):
            if not write.done.cancelled():
                write.done.set_result(result)
        return True

    async def _commit_alone(self, item: _Write) -> None:
        try:
            async with self.sessions() as session, session.begin():
                result = await item.operation(session)
        except Exception as error:
            if not item.done.cancelled():
                item.done.set_exception(error)
            # Errors raised on purpose (bad input, unknown job) are the caller's to handle.
            if not isinstance(error, UserFacingError | RefusedWrite):
                log.exception("database write failed")
        else:
            if not item.done.cancelled():
                item.done.set_result(result)


class QueueingPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, whose wait for a free connection that runs out is a DatabaseBusy refusal."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except sqlalchemy.exc.TimeoutError:
            log.warning("no free database connection within %.0f s (pool of %d)", self._timeout, self.size())
            raise DatabaseBusy() from None


def _configure_connection(dbapi_connection: Any, connection_record: Any) -> None:
    """Pragmas for every new connection: a rollback journal and no memory mapping (no SIGBUS; see the
    module's docstring), wait instead of failing when busy, enforce foreign keys."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA journal_mode={JOURNAL_MODE}")  # also turns a WAL database of older versions back
        cursor.execute("PRAGMA mmap_size=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")  # with a rollback journal, what makes a commit survive power loss
    finally:
        cursor.close()
