"""Alembic environment for Stepgrid.

Three ways in:
- `config.attributes["connection"]`: a sync Connection handed over by the caller (e.g. from an
  async connection's `run_sync`); used as is.
- an async URL (`sqlite+aiosqlite:///...`): an async engine, migrations run through `run_sync`.
- a sync URL (`sqlite:///...`), as `bot.storage.database.upgrade_database` and the `alembic` CLI use.
Without a URL in the config (or `-x url=...`), the database is the one Stepgrid's settings name
(STEPGRID_DATABASE_URL's PostgreSQL, else the SQLite file). The same migrations run on both.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from pathlib import Path
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection, engine_from_config, make_url
from sqlalchemy.ext.asyncio import async_engine_from_config

from bot.storage.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate: `-x url=`, then the ini's sqlalchemy.url, then Stepgrid's settings."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from bot.config import Settings

        settings = Settings()
        url = settings.database_url or f"sqlite:///{settings.database_path}"
    database = make_url(url).database
    sqlite = make_url(url).get_backend_name() == "sqlite"
    if sqlite and database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write UTCDateTime as a plain DateTime so that migrations never import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can't ALTER most things; batch mode copies the table
        compare_type=True,
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = url
    engine = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    url = database_url()
    if make_url(url).get_dialect().is_async:
        asyncio.run(run_async_migrations(url))
        return
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = url
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            do_run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
