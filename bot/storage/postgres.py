"""The ledger on a PostgreSQL server (STEPGRID_DATABASE_URL): its URL, connection errors, migrations, lock keys.

The driver is psycopg 3 (SQLAlchemy's `postgresql+psycopg`): one package serves both the bot's async
engine and the blocking connections of Alembic, `stepgrid db` and `stepgrid usage`, where asyncpg
would need a second, sync driver beside it. The code never imports psycopg itself: SQLAlchemy
does, so the bot without the `postgres` extra runs on SQLite as before.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext

from bot.storage.migrate import DatabaseTooNew, DatabaseUnusable, alembic_config, unknown_revision

log = logging.getLogger(__name__)

SETTING = "STEPGRID_DATABASE_URL"
NAMESPACE = "stepgrid"
# What `migrate` locks while it upgrades: two bots starting at once on one database take turns.
MIGRATION_OWNER = ("migrations",)


def shown(url: str) -> str:
    """The URL as messages and logs show it: the password hidden."""
    return sa.make_url(url).render_as_string(hide_password=True)


def advisory_key(*owner: str) -> int:
    """The 64-bit PostgreSQL advisory lock key of `owner` (("bot", bot id), and later its shard).

    A hash, so keys need no registry: a shard's lock is ("bot", id, "shard", "3"), a new key beside the
    bot's. Advisory locks are per database, so two Stepgrid databases on one server never collide.
    """
    digest = hashlib.sha256("/".join((NAMESPACE, *owner)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def unusable(url: str, error: sa.exc.DBAPIError, doing: str) -> DatabaseUnusable:
    """A connection or SQL error as one line naming the database (without its password)."""
    original = getattr(error, "orig", None) or error
    reason = " ".join(str(original).split()) or type(original).__name__
    return DatabaseUnusable(shown(url), f"{doing} ({reason})", setting=SETTING)


def blocking_engine(url: str, **connect_args: object) -> sa.Engine:
    """A sync engine on the server, one connection at a time (`stepgrid db`, `usage`, migrations, the lock)."""
    try:
        return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except (sa.exc.ArgumentError, ImportError) as error:  # no psycopg installed
        raise DatabaseUnusable(
            shown(url), f"the PostgreSQL driver is missing ({error}); pip install 'stepgrid[postgres]'", setting=SETTING
        ) from None


def server_revisions(connection: sa.Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def check_server_revision(url: str) -> None:
    """Raise DatabaseTooNew if the database is at a revision this code doesn't know, DatabaseUnusable if
    the server can't be reached."""
    engine = blocking_engine(url)
    try:
        with engine.connect() as connection:
            unknown = unknown_revision(server_revisions(connection))
    except sa.exc.DBAPIError as error:
        raise unusable(url, error, "the server can't be reached") from None
    finally:
        engine.dispose()
    if unknown is not None:
        raise DatabaseTooNew(unknown, elsewhere=f"point {SETTING} at another database")


def upgrade_server_database(url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on the server: the same migrations as SQLite's, in one transaction.

    PostgreSQL runs DDL in transactions: the migration is all or nothing, and a transaction-level
    advisory lock makes a second bot starting at the same moment wait for it, then find nothing to do.
    Blocking: from async code, run it with `asyncio.to_thread` (Database.start does).
    """
    engine = blocking_engine(url)
    try:
        connection = engine.connect()
    except sa.exc.DBAPIError as error:
        engine.dispose()
        raise unusable(url, error, "the server can't be reached") from None
    try:
        with connection, connection.begin():
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(*MIGRATION_OWNER))))
            unknown = unknown_revision(server_revisions(connection))
            if unknown is not None:
                raise DatabaseTooNew(unknown, elsewhere=f"point {SETTING} at another database")
            log.info("applying database migrations to %s", shown(url))
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except sa.exc.DBAPIError as error:
        raise unusable(url, error, "the migration failed") from None
    finally:
        engine.dispose()
