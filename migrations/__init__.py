"""Alembic migrations of Stepgrid's SQLite database; `bot.db.upgrade_database` applies them."""
