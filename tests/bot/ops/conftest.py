"""The usage report's tests read the ledger on both backends (tests/bot/backends.py)."""

from tests.bot.backends import backend, db  # noqa: F401  (fixtures)
