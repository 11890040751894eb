"""The Database: where its parts live, and which database the operator's settings choose."""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings
from bot.storage.database import Database


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_input_images_live_in_a_folder_beside_the_database_file(tmp_path: Path) -> None:
    database = Database(tmp_path / "data" / "stepgrid.sqlite3", settings())
    assert database.inputs.folder == tmp_path / "data" / "inputs"


def test_the_settings_choose_the_sqlite_file_unless_a_database_url_is_given(tmp_path: Path) -> None:
    sqlite = Database.from_settings(settings(database_path=tmp_path / "bot.sqlite3"))
    assert (sqlite.path, sqlite.url) == (tmp_path / "bot.sqlite3", None)

    chosen = settings(database_path=tmp_path / "bot.sqlite3", database_url="postgresql://bot@127.0.0.1:1/stepgrid")
    server = Database.from_settings(chosen)
    assert server.url == chosen.database_url and server.url is not None
    assert server.inputs.folder == tmp_path / "inputs", "input images stay in the data folder on PostgreSQL too"
