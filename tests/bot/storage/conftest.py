"""The storage tests run on both ledger backends (tests/bot/backends.py)."""

from tests.bot.backends import backend, db, sqlite_db  # noqa: F401  (fixtures)
