"""The ledger's backends for the tests: its contract runs on SQLite and on a real PostgreSQL server alike.

A test module that imports these fixtures (tests/bot/storage/conftest.py does for the storage tests)
runs each test that takes `db` (or `backend`) once per backend; `sqlite_db` is for what only SQLite
has (its pragmas, its files).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import Settings
from bot.storage.database import Database
from tests.bot.fakes import FakeWallClock, plain_settings

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Backend:
    """Where one test's ledger lives: a SQLite file, or a database of its own on the test PostgreSQL server."""

    name: str
    path: Path  # the SQLite file; on PostgreSQL, only its folder is used (the data folder: input images)
    url: str | None = None

    def database(self, settings: Settings | None = None, *, clock: FakeWallClock | None = None) -> Database:
        """A new Database on this backend's ledger (as a restarted bot, or a second process, would open it)."""
        settings = settings or plain_settings()
        if clock is None:
            return Database(self.path, settings, url=self.url)
        return Database(self.path, settings, clock=clock, url=self.url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, db_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", db_path)
    server = request.getfixturevalue("postgres_server")
    return Backend("postgresql", db_path, server.create_database())


@pytest.fixture
async def db(backend: Backend, clock: FakeWallClock) -> AsyncIterator[Database]:
    """A started database, on each backend, whose clock the test moves."""
    database = backend.database(clock=clock)
    await database.start()
    yield database
    await database.close()


@pytest.fixture
async def sqlite_db(db_path: Path, clock: FakeWallClock) -> AsyncIterator[Database]:
    """A started SQLite database, for what only SQLite has."""
    database = Database(db_path, plain_settings(), clock=clock)
    await database.start()
    yield database
    await database.close()
