"""One bot per database: a lock file beside it, held while `stepgrid run` runs.

Two bots on one ledger would both recover and both answer the same jobs. The lock is an `flock` on
`<database>.lock`: the kernel drops it when its holder exits, however it exits (kill -9 included), so
a lock left by a dead bot never blocks the next start. The file keeps the holder's pid and host, for
the message. `stepgrid sync`, `db backup` and `usage` don't take it: they are meant to run beside the bot.

On PostgreSQL a file beside the database means nothing (the bots may run on other hosts): the lock
is a session-level advisory lock, keyed by the bot's id, on a connection held open for as long as
the bot runs. The server drops it when that connection ends: a clean exit, a kill -9 (the kernel
closes the socket), or a vanished host (TCP keepalives, set short on that connection). The key is a
tuple (`advisory_key`): one per bot id today; a shard's ownership can be a key of its own beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from bot.config import Settings
from bot.storage.migrate import DatabaseUnusable, check_database_file
from bot.storage.postgres import SETTING, advisory_key, blocking_engine, shown, unusable
from inference.queues.wire import DEFAULT_BOT_ID

# The default bot id (STEPGRID_BOT_ID): each bot process of a deployment has its own, and owns its jobs' rows.
BOT_ID = DEFAULT_BOT_ID
# A vanished host's lock is freed after about IDLE + INTERVAL x COUNT seconds (the server's keepalive probes).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3


class DatabaseInUse(RuntimeError):
    """Another running bot holds the database's lock; the message says which and what to do."""

    def __init__(self, path: Path, lock: Path, holder: str) -> None:
        super().__init__(
            f"another Stepgrid bot ({holder or 'pid unknown'}) is using the database {path}: stop it first, "
            f"or give this bot its own STEPGRID_DATABASE_PATH (the lock is {lock}; it goes when that bot exits)."
        )


class ServerDatabaseInUse(DatabaseInUse):
    """Another running bot holds this bot's advisory lock on the PostgreSQL database."""

    def __init__(self, url: str, owner: tuple[str, ...], holder: str) -> None:
        RuntimeError.__init__(
            self,
            f"another Stepgrid bot ({holder or 'unknown'}) runs as {'/'.join(owner)} on the database {shown(url)}: "
            f"stop it first, or give this bot its own database ({SETTING}); the lock goes when that bot's "
            "connection closes.",
        )


@contextlib.contextmanager
def bot_lock(settings: Settings, *, owner: tuple[str, ...] = ("bot", BOT_ID)) -> Iterator[None]:
    """One bot per database, on the operator's database: the SQLite file's lock, or PostgreSQL's advisory lock."""
    if settings.database_url is None:
        with database_lock(settings.database_path):
            yield
    else:
        with server_lock(settings.database_url, owner):
            yield


@contextlib.contextmanager
def server_lock(url: str, owner: tuple[str, ...]) -> Iterator[None]:
    """Hold `owner`'s advisory lock on the PostgreSQL database for the block; ServerDatabaseInUse if a live
    bot holds it, DatabaseUnusable if the server can't be reached."""
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    engine = blocking_engine(url, application_name=f"stepgrid bot ({me})"[:63])
    key = advisory_key(*owner)
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sa.exc.DBAPIError as error:
        engine.dispose()
        raise unusable(url, error, "the server can't be reached") from None
    try:
        for name, value in (
            ("tcp_keepalives_idle", KEEPALIVE_IDLE_S),
            ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_S),
            ("tcp_keepalives_count", KEEPALIVE_COUNT),
        ):
            connection.execute(sa.select(sa.func.set_config(name, str(value), False)))
        locked = connection.scalar(sa.select(sa.func.pg_try_advisory_lock(key)))
        holder = "" if locked else _holder(connection, key)
    except sa.exc.DBAPIError as error:
        connection.close()
        engine.dispose()
        raise unusable(url, error, "the bot's lock could not be taken") from None
    if not locked:
        connection.close()
        engine.dispose()
        raise ServerDatabaseInUse(url, owner, holder)
    try:
        yield
    finally:
        # Closing the connection frees the lock (unlocking first would only cost a round trip that can fail).
        connection.close()
        engine.dispose()


def _holder(connection: sa.Connection, key: int) -> str:
    """Who holds the advisory lock `key`, as its connection named itself ("stepgrid bot (pid 12 on host)")."""
    # pg_locks splits a 64-bit key into two 32-bit halves (classid, objid; objsubid 1).
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    query = sa.text(
        "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid) "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    row = connection.execute(query, {"high": high, "low": low}).first()
    if row is None:
        return ""
    name, address = row
    return f"{name or 'a connection'} from {address}" if address else str(name or "")


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def database_lock(path: Path | str) -> Iterator[Path]:
    """Hold the database's lock for the block; DatabaseInUse if a live bot holds it, DatabaseUnusable if
    its folder can't take the lock file."""
    path = Path(path).expanduser()
    check_database_file(path)  # a folder that can't be made or written is named as the database's problem
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise DatabaseUnusable(path, f"its lock file {lock} can't be opened ({error.strerror or error})") from None
    with os.fdopen(fd, "r+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseInUse(path, lock, file.read().strip()) from None
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        yield lock
