"""One bot per database: a lock file beside it, held while `stepgrid run` runs.

Two bots on one ledger would both recover and both answer the same jobs. The lock is an `flock` on
`<database>.lock`: the kernel drops it when its holder exits, however it exits (kill -9 included), so
a lock left by a dead bot never blocks the next start. The file keeps the holder's pid and host, for
the message. `stepgrid sync`, `db backup` and `usage` don't take it: they are meant to run beside the bot.

On PostgreSQL a file beside the database means nothing (the bots may run on other hosts): the lock
is a session-level advisory lock, keyed by the bot's id, on a connection held open for as long as
the bot runs. The server drops it when that connection ends: a clean exit, a kill -9 (the kernel
closes the socket), or a vanished host (TCP keepalives, set short on that connection). The key is a
tuple (`advisory_key`), one per bot id.

Shards (STEPGRID_SHARD_COUNT/IDS) make the lock per shard, so that processes running disjoint shard
ranges of one bot share a PostgreSQL database: each takes the bot's key shared (a bot that runs every
shard unsharded takes it exclusively, so the two never mix), its shard count's key shared (a process
with another count is refused: its servers would map to other shards), and an exclusive key per shard
it runs (an overlapping range is refused, naming the holder). A SQLite file stays one process's: its
file lock is whole, sharded or not.
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
from bot.sharding import ShardRange, spans
from bot.storage.migrate import DatabaseUnusable, check_database_file
from bot.storage.postgres import SETTING, advisory_key, blocking_engine, shown, unusable
from inference.queues.wire import DEFAULT_BOT_ID

# The default bot id (STEPGRID_BOT_ID): each bot process of a deployment has its own, and owns its jobs' rows.
BOT_ID = DEFAULT_BOT_ID
# A vanished host's lock is freed after about IDLE + INTERVAL x COUNT seconds (the server's keepalive probes).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 30, 10, 3


class DatabaseInUse(RuntimeError):
    """Another running bot holds the database's lock; the message says which and what to do."""

    def __init__(self, path: Path, lock: Path, holder: str, *, sharded: bool = False) -> None:
        several = (
            " Shards in several processes need the ledger on PostgreSQL (STEPGRID_DATABASE_URL): a SQLite file is "
            "one process's."
            if sharded
            else ""
        )
        super().__init__(
            f"another Stepgrid bot ({holder or 'pid unknown'}) is using the database {path}: stop it first, "
            f"or give this bot its own STEPGRID_DATABASE_PATH (the lock is {lock}; it goes when that bot exits)."
            + several
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


class ShardsInUse(DatabaseInUse):
    """Another running process of this bot runs some of these shards, or runs another shard count."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)


@contextlib.contextmanager
def bot_lock(
    settings: Settings, *, owner: tuple[str, ...] = ("bot", BOT_ID), shards: ShardRange | None = None
) -> Iterator[None]:
    """One bot per database, on the operator's database: the SQLite file's lock, or PostgreSQL's advisory lock.

    With `shards` (a process running some shards), on PostgreSQL: only those shards' locks are its own.
    """
    if settings.database_url is None:
        with database_lock(settings.database_path, shards=shards):
            yield
    else:
        with server_lock(settings.database_url, owner, shards=shards):
            yield


@contextlib.contextmanager
def server_lock(url: str, owner: tuple[str, ...], *, shards: ShardRange | None = None) -> Iterator[None]:
    """Hold `owner`'s advisory lock on the PostgreSQL database for the block (with `shards`: those shards');
    ServerDatabaseInUse if a live bot holds it, ShardsInUse if a live process runs one of the shards or another
    shard count, DatabaseUnusable if the server can't be reached."""
    me = f"pid {os.getpid()} on {socket.gethostname()}" + ("" if shards is None else f", {shards}")
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
        take = sa.func.pg_try_advisory_lock if shards is None else sa.func.pg_try_advisory_lock_shared
        locked = connection.scalar(sa.select(take(key)))
        refusal: DatabaseInUse | None = None
        if not locked:
            refusal = ServerDatabaseInUse(url, owner, _holder(connection, *_halves(key)))
        elif shards is not None:
            refusal = _take_shards(connection, url, owner, shards)
    except sa.exc.DBAPIError as error:
        connection.close()
        engine.dispose()
        raise unusable(url, error, "the bot's lock could not be taken") from None
    if refusal is not None:
        connection.close()  # frees whatever part it took
        engine.dispose()
        raise refusal
    try:
        yield
    finally:
        # Closing the connection frees the lock (unlocking first would only cost a round trip that can fail).
        connection.close()
        engine.dispose()


def _halves(key: int) -> tuple[int, int, int]:
    # pg_locks splits a 64-bit key into two 32-bit halves (classid, objid; objsubid 1).
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF, 1


def _space(*owner: str) -> int:
    """The first of a two-key advisory lock (a non-negative int4): pg_locks shows it as classid, objsubid 2."""
    return advisory_key(*owner) & 0x7FFFFFFF


def _int4(value: int) -> sa.ColumnElement[int]:
    # The two-key advisory functions take two int4s; a bare parameter may be bound as int8 and match none.
    return sa.cast(sa.literal(value), sa.Integer)


def _take_shards(
    connection: sa.Connection, url: str, owner: tuple[str, ...], shards: ShardRange
) -> DatabaseInUse | None:
    """Take the shard count's lock (shared) and each shard's (exclusive); what refuses them, if anything."""
    # Shards are the bot's, whatever the process's bot id: two processes must never run one shard.
    counts = _space(owner[0], "shard count")
    connection.scalar(sa.select(sa.func.pg_try_advisory_lock_shared(_int4(counts), _int4(shards.count))))
    other = _holders(connection, counts, exclude=shards.count)
    if other:
        count, holder = other[0]
        return ShardsInUse(
            f"another Stepgrid bot ({holder}) runs {count} shards on the database {shown(url)}, and this one "
            f"STEPGRID_SHARD_COUNT={shards.count}: every process of a bot must use the same shard count (stop them "
            "all to change it)."
        )
    space = _space(owner[0], "shard")
    taken = [
        connection.scalar(sa.select(sa.func.pg_try_advisory_lock(_int4(space), _int4(shard)))) for shard in shards.ids
    ]
    busy = tuple(shard for shard, ok in zip(shards.ids, taken, strict=True) if not ok)
    if not busy:
        return None
    holder = _holder(connection, space, busy[0], 2)
    return ShardsInUse(
        f"shard{'s' if len(busy) > 1 else ''} {spans(busy)} of {shards.count} already run in another Stepgrid bot "
        f"({holder or 'unknown'}) on the database {shown(url)}: give each process its own STEPGRID_SHARD_IDS "
        "(the ranges must not overlap), or stop that one first."
    )


_LOCKS = (
    "SELECT l.objid, a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = :subid AND l.classid = CAST(:classid AS oid) "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _named(name: str | None, address: object) -> str:
    return f"{name or 'a connection'} from {address}" if address else str(name or "")


def _holder(connection: sa.Connection, classid: int, objid: int, subid: int) -> str:
    """Who holds an advisory lock, as its connection named itself ("stepgrid bot (pid 12 on host)")."""
    query = sa.text(_LOCKS + " AND l.objid = CAST(:objid AS oid)")
    row = connection.execute(query, {"classid": classid, "objid": objid, "subid": subid}).first()
    return "" if row is None else _named(row[1], row[2])


def _holders(connection: sa.Connection, classid: int, *, exclude: int) -> list[tuple[int, str]]:
    """The second keys (and holders) of the two-key advisory locks held in `classid`, but `exclude`."""
    rows = connection.execute(sa.text(_LOCKS), {"classid": classid, "subid": 2}).all()
    return [(int(objid), _named(name, address)) for objid, name, address in rows if int(objid) != exclude]


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def database_lock(path: Path | str, *, shards: ShardRange | None = None) -> Iterator[Path]:
    """Hold the database's lock for the block; DatabaseInUse if a live bot holds it, DatabaseUnusable if
    its folder can't take the lock file. Whole, whatever `shards` this process runs: SQLite is one process's."""
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
            raise DatabaseInUse(path, lock, file.read().strip(), sharded=shards is not None) from None
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}" + ("" if shards is None else f", {shards}") + "\n")
        file.flush()
        yield lock
