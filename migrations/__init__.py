"""Alembic migrations of Stepgrid's database, SQLite or PostgreSQL (`bot.storage.migrate` applies them)."""
