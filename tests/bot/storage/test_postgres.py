"""What only a shared PostgreSQL ledger needs: the same migrations, writes that stay exactly-once across
processes, the bot's advisory lock, and pg_dump backups — on a real server (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.config import Settings
from bot.errors import DatabaseBusy
from bot.storage.database import Database
from bot.storage.lock import BOT_ID
from bot.storage.migrate import DatabaseTooNew, DatabaseUnusable, alembic_config
from bot.storage.models import Base
from bot.storage.postgres import advisory_key, upgrade_server_database
from inference.protocol import JobFailed, JobResult
from tests.bot.cli.stepgrid_process import one_error_line, stepgrid
from tests.bot.fakes import ALICE, BOB, GUILD, plain_settings, record
from tests.postgres_server import PostgresServer

TABLES = {"jobs", "guild_limits", "limits_changes", "command_syncs", "settle_points"}


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[object]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def database(url: str, tmp_path: Path) -> Database:
    return Database(tmp_path / "data" / "stepgrid.sqlite3", plain_settings(), url=url)


# --- migrations ------------------------------------------------------------------------------------


def test_the_migrations_build_the_models_schema_on_postgresql(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()

    upgrade_server_database(url)
    upgrade_server_database(url)  # twice: nothing to do

    assert tables(url) == TABLES
    assert schema_diff(url) == []


def test_every_migration_downgrades_and_upgrades_again_on_postgresql(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    upgrade_server_database(url)

    command.downgrade(alembic_config(url), "base")
    assert tables(url) == set()

    upgrade_server_database(url)
    assert tables(url) == TABLES and schema_diff(url) == []


def test_the_alembic_cli_migrates_the_database_stepgrid_database_url_names(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}

    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=Path(__file__).resolve().parents[3],
        env={**clean, "STEPGRID_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert tables(url) == TABLES


async def test_a_database_from_a_newer_stepgrid_is_refused_naming_the_url_setting(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    upgrade_server_database(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    engine.dispose()

    with pytest.raises(DatabaseTooNew, match="point STEPGRID_DATABASE_URL at another database"):
        await database(url, tmp_path).start()


async def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://stepgrid:hunter2@127.0.0.1:1/stepgrid"

    with pytest.raises(DatabaseUnusable) as refused:
        await database(url, tmp_path).start()

    message = str(refused.value)
    assert message.startswith("cannot use the database postgresql+psycopg://stepgrid:***@127.0.0.1:1/stepgrid: ")
    assert "can't be reached" in message and message.endswith("check STEPGRID_DATABASE_URL.")
    assert "hunter2" not in message


# --- exactly once, across processes -----------------------------------------------------------------


async def test_two_bot_processes_finishing_the_same_jobs_record_each_exactly_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    first, second = database(url, tmp_path), database(url, tmp_path)
    await first.start()
    await second.start()
    try:
        jobs = [await record(first) for _ in range(20)]
        for job in jobs:
            await first.ledger.mark_running(job.id)

        # Each process reads the job as running and finishes it: the row lock lets one through, and the
        # other then reads it finished.
        outcomes = await asyncio.gather(
            *(first.ledger.mark_finished(job.id, JobResult(job.id, (), gpu_seconds=1)) for job in jobs),
            *(second.ledger.mark_finished(job.id, JobFailed(job.id, "lost", steps_run=3)) for job in jobs),
        )

        assert sum(outcomes) == len(jobs)
        for job, done_first, failed_second in zip(jobs, outcomes[: len(jobs)], outcomes[len(jobs) :], strict=True):
            row = await second.ledger.get_job(job.id)
            assert row is not None and done_first != failed_second
            assert (row.status, row.steps_run) == (("done", 0) if done_first else ("failed", 3))
    finally:
        await first.close()
        await second.close()


def pooled(url: str, tmp_path: Path, *, size: int, timeout: float = 60.0) -> Database:
    """A Database on `url` that opens at most `size` connections, waiting up to `timeout` s for one."""
    settings = Settings(_env_file=None, database_pool_size=size, database_pool_timeout=timeout)  # type: ignore[call-arg]
    return Database(tmp_path / "stepgrid.sqlite3", settings, url=url)


async def test_more_ledger_reads_at_once_than_the_pool_holds_wait_for_a_connection_and_all_succeed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = pooled(postgres_server.create_database(), tmp_path, size=2)
    await db.start()
    try:
        await record(db, user=ALICE)
        async with db.engine.connect() as held:  # one of the two connections busy all along
            await held.execute(sa.text("SELECT 1"))
            reads = await asyncio.gather(
                *(db.ledger.active_jobs(GUILD, ALICE) for _ in range(40)),
                *(db.ledger.steps_used_today(GUILD, ALICE) for _ in range(40)),
                *(db.server_limits.get_limits(GUILD) for _ in range(40)),
            )
        assert [len(jobs) for jobs in reads[:40]] == [1] * 40  # type: ignore[arg-type]
        assert reads[40:80] == [30] * 40
        assert db.engine.pool.size() == 2
    finally:
        await db.close()


async def test_a_command_that_finds_every_connection_busy_past_the_wait_is_refused_in_one_line(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = pooled(postgres_server.create_database(), tmp_path, size=2, timeout=0.2)
    await db.start()
    try:
        async with db.engine.connect() as first, db.engine.connect() as second:
            await first.execute(sa.text("SELECT 1"))
            await second.execute(sa.text("SELECT 1"))
            with pytest.raises(DatabaseBusy) as refused:
                await db.ledger.active_jobs(GUILD, ALICE)
        assert str(refused.value) == "The bot's database is too busy right now; try again in a minute."
        assert await db.ledger.active_jobs(GUILD, ALICE) == []  # free again
    finally:
        await db.close()


async def test_limit_changes_from_two_processes_keep_an_unbroken_audit_trail(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    first, second = database(url, tmp_path), database(url, tmp_path)
    await first.start()
    await second.start()
    try:
        await first.server_limits.set_limits(GUILD, ALICE, max_steps=10)
        await asyncio.gather(
            *(first.server_limits.set_limits(GUILD, ALICE, max_steps=steps) for steps in (20, 40, 60)),
            *(second.server_limits.set_limits(GUILD, BOB, max_steps=steps) for steps in (30, 50, 70)),
        )
        history = list(reversed(await first.server_limits.limits_history(GUILD)))
    finally:
        await first.close()
        await second.close()

    # Each change starts from the value the one before it left, none from a stale read: the changes form
    # one chain from nothing to the value the server has now. (Their timestamps are when each was asked.)
    following = {change.old_value: change.new_value for change in history}
    assert len(following) == len(history) == 7  # no two changes made from the same value
    chain = [None]
    while chain[-1] in following:
        chain.append(following[chain[-1]])
    assert len(chain) == 8 and chain[1] == 10


# --- one bot per id: the advisory lock ------------------------------------------------------------------

HOLD_LOCK = """
import sys
from bot.config import Settings
from bot.storage.lock import bot_lock
with bot_lock(Settings(_env_file=None, database_url=sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def lock_is_held(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    key = advisory_key("bot", BOT_ID)
    try:
        with engine.connect() as connection:
            query = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = CAST(:high AS oid) "
                "AND objid = CAST(:low AS oid) AND objsubid = 1"
            )
            return bool(connection.scalar(query, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}))
    finally:
        engine.dispose()


def test_a_second_bot_with_the_same_id_is_refused_in_one_line_and_a_killed_ones_lock_is_freed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )  # the running bot, in a process of its own
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        unreachable = {"STEPGRID_DISCORD_API_BASE": "http://127.0.0.1:1/api/v10", "STEPGRID_MODEL": "tiny"}
        run = stepgrid("run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, STEPGRID_DATABASE_URL=url, **unreachable)
        upgrade = stepgrid("db", "upgrade", cwd=tmp_path, STEPGRID_DATABASE_URL=url)
        assert run.returncode == 2 and upgrade.returncode == 2
        line = one_error_line(run)
        assert f"another Stepgrid bot (stepgrid bot (pid {holder.pid} on " in line, line
        assert f"runs as bot/{BOT_ID} on the database {url}" in line and "STEPGRID_DATABASE_URL" in line, line
        assert "another Stepgrid bot" in one_error_line(upgrade)
        assert tables(url) == set()  # refused before any migration
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # kill -9: the kernel closes its socket, the server ends its session and drops the lock.
    deadline = time.monotonic() + 30
    while lock_is_held(url):
        assert time.monotonic() < deadline, "the killed bot's lock was not freed in 30 s"
        time.sleep(0.05)  # polling a condition with a deadline
    upgrade = stepgrid("db", "upgrade", cwd=tmp_path, STEPGRID_DATABASE_URL=url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.strip() == f"database {url} is at the latest schema"
    assert tables(url) == TABLES


# --- backups: pg_dump --------------------------------------------------------------------------------


async def test_db_backup_dumps_the_database_and_pg_restore_brings_it_back(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    ledger = database(url, tmp_path)
    await ledger.start()
    try:
        jobs = {(await record(ledger)).id for _ in range(3)}
        await ledger.server_limits.set_limits(GUILD, ALICE, max_steps=40)

        # While the bot's database is open, as `stepgrid db backup` runs beside the bot.
        result = await asyncio.to_thread(
            stepgrid, "db", "backup", str(tmp_path / "ledger.dump"), cwd=tmp_path, STEPGRID_DATABASE_URL=url
        )
    finally:
        await ledger.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"backed up {url} to {tmp_path / 'ledger.dump'}: 3 jobs, "), result.stdout

    restored = postgres_server.create_database()
    libpq_url = restored.replace("+psycopg", "")
    restore = ["pg_restore", "--no-owner", f"--dbname={libpq_url}", str(tmp_path / "ledger.dump")]
    await asyncio.to_thread(subprocess.run, restore, check=True, capture_output=True)
    copy = database(restored, tmp_path)
    await copy.start()
    try:
        assert {row.id for row in await copy.ledger.unfinished_jobs()} == jobs
        assert (await copy.server_limits.get_limits(GUILD)).max_steps == 40
    finally:
        await copy.close()


def test_db_backup_without_pg_dump_says_what_to_install(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.create_database()

    result = stepgrid(
        "db", "backup", str(tmp_path / "x.dump"), cwd=tmp_path, STEPGRID_DATABASE_URL=url, PATH="/nowhere"
    )

    assert result.returncode == 2
    assert one_error_line(result).startswith("stepgrid: pg_dump is not installed here: install PostgreSQL's client")
    assert not os.listdir(tmp_path)  # no partial file left
