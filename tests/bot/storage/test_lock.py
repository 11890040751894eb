"""Who may run on a database: one bot per SQLite file (the lock beside it, who holds it, and that it goes
with its holder); on PostgreSQL, one process per bot id, and with shards one process per shard of a bot.

Each lock here is taken on a connection (or file description) of its own, as a second process would:
PostgreSQL's advisory locks belong to a session and `flock` to an open file, so one test process can
stand for two bots. The refusal as `stepgrid run` prints it is in tests/bot/cli/test_main.py.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from bot.config import Settings
from bot.sharding import ShardRange
from bot.storage.lock import DatabaseInUse, ServerDatabaseInUse, ShardsInUse, bot_lock, database_lock, lock_path
from bot.storage.migrate import DatabaseUnusable
from tests.bot.backends import Backend

FIRST, SECOND = ShardRange(4, (0, 1)), ShardRange(4, (2, 3))


def settings_of(backend: Backend) -> Settings:
    if backend.url is None:
        return Settings(_env_file=None, database_path=backend.path)  # type: ignore[call-arg]
    return Settings(_env_file=None, database_url=backend.url)  # type: ignore[call-arg]


def lock(backend: Backend, shards: ShardRange | None) -> contextlib.AbstractContextManager[None]:
    return bot_lock(settings_of(backend), shards=shards)


def test_two_unsharded_bots_never_share_a_database(backend: Backend) -> None:
    with lock(backend, None), pytest.raises(DatabaseInUse, match="another Stepgrid bot"), lock(backend, None):
        pass


def test_an_unsharded_bot_and_a_sharded_one_never_share_a_database(backend: Backend) -> None:
    with lock(backend, None), pytest.raises(DatabaseInUse, match="another Stepgrid bot"), lock(backend, FIRST):
        pass
    with lock(backend, FIRST), pytest.raises(DatabaseInUse, match="another Stepgrid bot"), lock(backend, None):
        pass


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_processes_with_disjoint_shard_ranges_share_a_postgresql_database(backend: Backend) -> None:
    with lock(backend, FIRST), lock(backend, SECOND):
        pass


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_overlapping_range_is_refused_naming_the_shards_and_their_holder(backend: Backend) -> None:
    with lock(backend, FIRST), pytest.raises(ShardsInUse) as refused, lock(backend, ShardRange(4, (1, 2))):
        pass
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith("shard 1 of 4 already run in another Stepgrid bot (stepgrid bot (pid "), line
    assert "shards 0-1 of 4" in line and "STEPGRID_SHARD_IDS" in line and "must not overlap" in line, line
    with lock(backend, SECOND):  # the refused process let go of shard 2, which it had taken
        pass


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_process_with_another_shard_count_is_refused(backend: Backend) -> None:
    with lock(backend, FIRST), pytest.raises(ShardsInUse) as refused, lock(backend, ShardRange(8, (4, 5))):
        pass
    line = str(refused.value)
    assert "runs 4 shards" in line and "STEPGRID_SHARD_COUNT=8" in line and "same shard count" in line, line


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_stopped_processes_shards_can_be_taken_again(backend: Backend) -> None:
    with lock(backend, FIRST):
        pass
    with lock(backend, FIRST), lock(backend, SECOND):
        pass


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_sqlite_file_is_one_processs_even_with_disjoint_shards_and_says_to_use_postgresql(backend: Backend) -> None:
    with lock(backend, FIRST), pytest.raises(DatabaseInUse) as refused, lock(backend, SECOND):
        pass
    line = str(refused.value)
    assert not isinstance(refused.value, ServerDatabaseInUse)
    assert "shards 0-1 of 4" in line and "STEPGRID_DATABASE_URL" in line and "one process's" in line, line


def test_the_lock_file_sits_beside_the_database_and_names_its_holder(tmp_path: Path) -> None:
    database = tmp_path / "data" / "stepgrid.sqlite3"
    with database_lock(database) as lock:
        assert lock == lock_path(database) == tmp_path / "data" / "stepgrid.sqlite3.lock"
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
    assert not database.exists(), "taking the lock creates no database"


def test_a_second_holder_is_refused_naming_the_first_and_what_to_do(tmp_path: Path) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    with database_lock(database), pytest.raises(DatabaseInUse) as refused, database_lock(database):
        pass  # flock is per open file: this process's second open stands for a second bot
    message = str(refused.value)
    assert f"another Stepgrid bot (pid {os.getpid()} on " in message and str(database) in message
    assert "STEPGRID_DATABASE_PATH" in message and "\n" not in message


def test_the_lock_goes_with_its_holder_and_the_file_left_behind_blocks_nothing(tmp_path: Path) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    with database_lock(database):
        pass
    assert lock_path(database).exists()
    with database_lock(database):
        pass


def test_a_lock_file_that_cant_be_opened_is_the_databases_problem_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    lock_path(database).mkdir()
    unusable = pytest.raises(DatabaseUnusable, match=r"its lock file .*stepgrid\.sqlite3\.lock can't be opened")
    with unusable, database_lock(database):
        pass


def test_without_a_database_url_the_bot_takes_the_files_lock(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, database_path=tmp_path / "stepgrid.sqlite3")  # type: ignore[call-arg]
    with bot_lock(settings), pytest.raises(DatabaseInUse), database_lock(settings.database_path):
        pass
