"""Recovery and the limits policy read the ledger: their tests run on both backends (tests/bot/backends.py)."""

from tests.bot.backends import backend, db  # noqa: F401  (fixtures)
