"""One bot per database: a lock file beside it, held while `stepgrid run` runs.

Two bots on one ledger would both recover and both answer the same jobs. The lock is an `flock` on
`<database>.lock`: the kernel drops it when its holder exits, however it exits (kill -9 included), so
a lock left by a dead bot never blocks the next start. The file keeps the holder's pid and host, for
the message. `stepgrid sync`, `db backup` and `usage` don't take it: they are meant to run beside the bot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from bot.storage.migrate import DatabaseUnusable, check_database_file


class DatabaseInUse(RuntimeError):
    """Another running bot holds the database's lock; the message says which and what to do."""

    def __init__(self, path: Path, lock: Path, holder: str) -> None:
        super().__init__(
            f"another Stepgrid bot ({holder or 'pid unknown'}) is using the database {path}: stop it first, "
            f"or give this bot its own STEPGRID_DATABASE_PATH (the lock is {lock}; it goes when that bot exits)."
        )


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
