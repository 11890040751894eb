"""Alembic migrations of Stepgrid's SQLite database; `bot.storage.database.upgrade_database` applies them."""
