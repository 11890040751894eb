"""One bot per database file: the lock beside it, who holds it, and that it goes with its holder.

The PostgreSQL advisory lock is tested on a real server in test_postgres.py; the refusal as `stepgrid run`
prints it in tests/bot/cli/test_main.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.config import Settings
from bot.storage.lock import DatabaseInUse, bot_lock, database_lock, lock_path
from bot.storage.migrate import DatabaseUnusable


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
