"""Fixtures of the bot's tests; the fakes themselves are in tests/bot/fakes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.config import Settings
from bot.storage.database import Database
from tests.bot.fakes import FakeWallClock, Harness


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    async with Database(tmp_path / "stepgrid.sqlite3", settings) as database:
        yield database


@pytest.fixture
def clock() -> FakeWallClock:
    return FakeWallClock(datetime(2026, 3, 14, 12, 0, tzinfo=UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "stepgrid.sqlite3"


@pytest.fixture
async def db(db_path: Path, clock: FakeWallClock) -> AsyncIterator[Database]:
    """A started database whose clock the test moves."""
    database = Database(db_path, Settings(_env_file=None), clock=clock)  # type: ignore[call-arg]
    await database.start()
    yield database
    await database.close()
