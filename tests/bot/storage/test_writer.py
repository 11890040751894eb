"""The database and its writer: SQLite's connection pragmas, and one writer under load (on both backends)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.database import Database
from bot.storage.ledger import LedgerJobMissing
from bot.storage.models import LimitsChange
from tests.bot.backends import Backend
from tests.bot.fakes import ALICE, GUILD, all_jobs, plain_settings, record
from tests.bot.fakes import FakeWallClock as FakeClock

# --- connections -------------------------------------------------------------------------------


async def test_every_connection_uses_a_rollback_journal_busy_timeout_and_foreign_keys(sqlite_db: Database) -> None:
    async with sqlite_db.engine.connect() as connection:
        journal = await connection.exec_driver_sql("PRAGMA journal_mode")
        mmap = await connection.exec_driver_sql("PRAGMA mmap_size")
        busy = await connection.exec_driver_sql("PRAGMA busy_timeout")
        foreign_keys = await connection.exec_driver_sql("PRAGMA foreign_keys")
        assert journal.scalar() == "truncate"
        assert mmap.scalar() == 0
        assert busy.scalar() > 0
        assert foreign_keys.scalar() == 1


async def test_nothing_is_memory_mapped_so_a_disk_gone_read_only_cannot_kill_the_bot_with_sigbus(
    sqlite_db: Database, db_path: Path
) -> None:
    await record(sqlite_db)
    assert len(await all_jobs(sqlite_db)) == 1
    # WAL would keep a memory-mapped `-shm` index beside the file: SIGBUS when the disk turns read-only.
    assert not db_path.with_name(db_path.name + "-shm").exists()


async def test_a_database_left_in_wal_mode_by_an_older_version_is_turned_back(db_path: Path) -> None:
    import sqlite3

    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    async with Database(db_path, plain_settings()) as database:
        await record(database)
    assert not db_path.with_name(db_path.name + "-shm").exists()
    connection = sqlite3.connect(db_path)
    try:  # WAL is the one journal mode stored in the file; the others are per connection
        assert connection.execute("PRAGMA journal_mode").fetchone() != ("wal",)
    finally:
        connection.close()


async def test_foreign_keys_are_enforced(db: Database) -> None:
    async def orphan_audit_row(session: AsyncSession) -> None:
        session.add(
            LimitsChange(
                guild_id=999, user_id=ALICE, field="max_steps", old_value=None, new_value=20, changed_at=db.clock()
            )
        )

    with pytest.raises(IntegrityError):
        await db.write(orphan_audit_row)


async def test_the_database_folder_is_created(sqlite_db: Database, db_path: Path) -> None:
    assert await asyncio.to_thread(db_path.is_file)


# --- the writer ----------------------------------------------------------------------------------


async def test_200_jobs_recorded_concurrently_are_all_there(db: Database) -> None:
    jobs = await asyncio.gather(*(record(db, user=user % 7) for user in range(200)))

    stored = await all_jobs(db)
    assert len(stored) == 200
    assert {job.id for job in stored} == {job.id for job in jobs}


async def test_200_concurrent_writers_mixed_with_reads_never_hit_a_locked_database(db: Database) -> None:
    async def one_member_session(user: int) -> None:
        job = await record(db, user=user)
        await db.ledger.steps_used_today(GUILD, user)
        await db.ledger.mark_running(job.id)
        await db.ledger.active_jobs(GUILD, user)
        await db.ledger.mark_done(job.id, gpu_seconds=0.5, queue_seconds=0.1, steps_run=30)

    # gather raises the first error, "database is locked" included.
    await asyncio.gather(*(one_member_session(user) for user in range(200)))

    stored = await all_jobs(db)
    assert len(stored) == 200
    assert {job.status for job in stored} == {"done"}


async def test_writes_queued_before_close_are_finished(backend: Backend, clock: FakeClock) -> None:
    database = backend.database(clock=clock)
    await database.start()

    # gather starts the tasks in order: all 20 writes are queued before close() queues its stop.
    *jobs, _ = await asyncio.gather(*(record(database) for _ in range(20)), database.close())

    reopened = backend.database(clock=clock)
    await reopened.start()
    assert {job.id for job in await all_jobs(reopened)} == {job.id for job in jobs}
    await reopened.close()


async def test_a_write_after_close_is_refused(backend: Backend) -> None:
    database = backend.database()
    await database.start()
    await database.close()

    with pytest.raises(RuntimeError, match="not running"):
        await record(database)


async def test_a_failing_write_does_not_stop_the_writer(db: Database) -> None:
    with pytest.raises(LedgerJobMissing):
        await db.ledger.mark_running("no-such-job")

    job = await record(db)
    assert await db.ledger.get_job(job.id) is not None


# --- group commit: writes waiting together share one transaction ---------------------------------------


def count_commits(database: Database) -> list[int]:
    """A list that grows by one at each transaction the database commits."""
    commits: list[int] = []
    event.listen(database.engine.sync_engine, "commit", lambda connection: commits.append(1))
    return commits


async def test_writes_waiting_together_are_committed_together(db: Database) -> None:
    commits = count_commits(db)
    jobs = await asyncio.gather(*(record(db, user=user) for user in range(40)))

    assert {job.id for job in await all_jobs(db)} == {job.id for job in jobs}
    assert len(commits) < 40 // 2, f"{len(commits)} commits for 40 writes queued at once"


async def test_a_failing_write_in_a_group_fails_alone_and_the_others_are_committed(db: Database) -> None:
    commits = count_commits(db)
    outcomes = await asyncio.gather(
        *(record(db, user=user) for user in range(10)),
        db.ledger.mark_running("no-such-job"),
        *(record(db, user=user) for user in range(10, 20)),
        return_exceptions=True,
    )

    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], LedgerJobMissing)
    assert len(await all_jobs(db)) == 20
    assert len(commits) == 20  # the group was rolled back, then each write ran alone (the failing one commits nothing)
