"""Alembic without alembic.ini: the installed migrations, applied to a database file at start-up or by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

import migrations

log = logging.getLogger(__name__)


class DatabaseTooNew(RuntimeError):
    """The database was migrated by a newer Stepgrid than this one; refusing to touch it."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"This database was written by a newer Stepgrid (revision {revision}); "
            "upgrade Stepgrid or point STEPGRID_DATABASE_PATH at another file."
        )
        self.revision = revision


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
