"""Alembic without alembic.ini: the installed migrations, applied to a database file at start-up or by hand."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tempfile
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

    def __init__(self, revision: str, *, elsewhere: str = "point STEPGRID_DATABASE_PATH at another file") -> None:
        super().__init__(
            f"This database was written by a newer Stepgrid (revision {revision}); upgrade Stepgrid or {elsewhere}."
        )
        self.revision = revision


SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseUnusable(RuntimeError):
    """The database file can't be used (a folder, an unwritable place, corrupt, another program's).

    The message names the file and says what is wrong with it, in one line.
    """

    def __init__(self, path: Path | str, problem: str, *, setting: str = "STEPGRID_DATABASE_PATH") -> None:
        super().__init__(f"cannot use the database {path}: {problem}; check {setting}.")
        self.path = path


def check_database_file(path: Path | str, *, writable: bool = True) -> None:
    """Raise DatabaseUnusable if `path` can't serve as Stepgrid's database; creates its folder when `writable`.

    Checked before anything else starts, so that an operator's mistake is one line rather than a
    traceback from deep inside SQLite or Alembic (or a bot that dies at its first write).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DatabaseUnusable(path, "it is a folder, not a file")
    if writable:
        _check_writable(path)
    if path.exists():
        _check_contents(path)


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatabaseUnusable(path, f"its folder can't be created ({_reason(error)})") from None
    # SQLite writes its journal beside the database: the folder itself must take new files.
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-probe-"):
            pass
    except OSError as error:
        raise DatabaseUnusable(path, f"its folder {path.parent} is not writable ({_reason(error)})") from None
    if path.exists():
        try:
            with path.open("r+b"):
                pass
        except OSError as error:
            raise DatabaseUnusable(path, f"the file is not writable ({_reason(error)})") from None


def _check_contents(path: Path) -> None:
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise DatabaseUnusable(path, f"the file can't be read ({_reason(error)})") from None
    if not header:
        return  # an empty file: SQLite makes a new database in it
    if header != SQLITE_HEADER:
        raise DatabaseUnusable(path, "the file is not a SQLite database (damaged, or another kind of file)")
    try:
        with contextlib.closing(sqlite3.connect(read_only_uri(path), uri=True)) as connection:
            # Reading the schema finds a damaged header or schema; a full integrity check would cost a
            # read of the whole file at every start.
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise DatabaseUnusable(path, f"the database is damaged ({error})") from None
    if tables and "alembic_version" not in tables:
        raise DatabaseUnusable(path, "it is another program's SQLite database (it has no Stepgrid tables)")


def read_only_uri(path: Path) -> str:
    """The SQLite URI that opens `path` read-only. Percent-encoded: a "#" or "?" in a folder name would
    otherwise end the file name, and SQLite would open (and create) another, empty database."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


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
    # Rendered by SQLAlchemy: a "?" or "#" in a folder name is quoted, not read as the URL's query.
    return sa.URL.create(scheme, database=str(Path(path).expanduser())).render_as_string(hide_password=False)


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
    """Raise DatabaseTooNew if the database is at a revision this code doesn't know (DatabaseUnusable if unreadable)."""
    check_database_file(path, writable=False)
    _check_known_revision(path)


def _check_known_revision(path: Path | str) -> None:
    unknown = unknown_revision(database_revisions(path))
    if unknown is not None:
        raise DatabaseTooNew(unknown)


def unknown_revision(revisions: tuple[str, ...]) -> str | None:
    """The first of a database's revisions that these migrations don't know (a newer Stepgrid's), or None."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    for revision in revisions:
        try:
            known = scripts.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            return revision
    return None


def upgrade_database(path: Path | str, revision: str = "head") -> None:
    """Create the database's folder if missing and apply the migrations (`alembic upgrade head`).

    Blocking: from async code, run it with `asyncio.to_thread` (Database.start does).
    """
    path = Path(path).expanduser()
    check_database_file(path)
    _check_known_revision(path)
    log.info("applying database migrations to %s", path)
    try:
        command.upgrade(alembic_config(sqlite_url(path)), revision)
    except (sa.exc.DBAPIError, sqlite3.Error) as error:
        # What the checks above can't foresee (a disk that fills up during the migration, say).
        original = getattr(error, "orig", None) or error
        raise DatabaseUnusable(path, f"the migration failed ({original})") from None
