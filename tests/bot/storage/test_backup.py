"""`stepgrid db backup`: a consistent copy while the bot writes, and one clear line for a bad target."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.config import Settings
from bot.storage.database import Database
from bot.storage.lock import DatabaseInUse, database_lock
from bot.storage.migrate import upgrade_database
from inference.requests import GenerateRequest


def rows(path: Path) -> tuple[str, list[str]]:
    """The copy's integrity verdict and its job ids, oldest first."""
    with contextlib.closing(sqlite3.connect(path)) as copy:
        (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
        ids = [job_id for (job_id,) in copy.execute("SELECT id FROM jobs ORDER BY rowid")]
    return verdict, ids


async def test_a_backup_while_the_bot_writes_jobs_is_consistent_and_holds_every_job_before_it(
    tmp_path: Path,
) -> None:
    database = Database(tmp_path / "stepgrid.sqlite3", Settings(_env_file=None))  # type: ignore[call-arg]
    await database.start()
    written: list[str] = []  # committed, in order
    enough = asyncio.Event()
    stop = asyncio.Event()

    async def keep_writing() -> None:
        while not stop.is_set():
            job = await database.ledger.record_job(
                GenerateRequest(prompt=f"job {len(written)}", steps=4), user_id=1, channel_id=2, guild_id=3
            )
            await database.ledger.mark_running(job.id)
            written.append(job.id)
            if len(written) == 50:
                enough.set()

    writer = asyncio.create_task(keep_writing())
    try:
        await enough.wait()
        before = list(written)
        backup = tmp_path / "backups" / "stepgrid-copy.sqlite3"
        backup.parent.mkdir()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli.main", "db", "backup", str(backup),
            cwd=tmp_path,
            env={**os.environ, "STEPGRID_DATABASE_PATH": str(database.path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        written_during = len(written) - len(before)
    finally:
        stop.set()
        await writer  # the bot's writes never failed: a lock held by the backup was waited for
        await database.close()

    assert process.returncode == 0, err.decode()
    assert written_during > 0  # the bot really was writing while the backup ran
    verdict, ids = rows(backup)
    assert verdict == "ok"
    assert set(before) <= set(ids)
    # One moment's database: every job committed up to some point, none after it, no gaps.
    assert ids == written[: len(ids)]
    assert f"{len(ids)} jobs" in out.decode()
    assert not [name for name in os.listdir(backup.parent) if name != backup.name]  # no partial file left


@pytest.fixture
def database_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stepgrid.sqlite3"
    upgrade_database(path)
    monkeypatch.setenv("STEPGRID_DATABASE_PATH", str(path))
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    return path


def backup_line(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["db", "backup", *argv])
    captured = capsys.readouterr()
    return status, (captured.err or captured.out).strip()


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no-such-folder/copy.sqlite3", "the folder no-such-folder does not exist"),
        ("/proc/stepgrid-copy.sqlite3", "can't write in /proc"),
        (".", "is a folder; give a file name"),
        ("stepgrid.sqlite3", "is the database itself"),
        ("stepgrid.sqlite3.lock", "is the database's lock file"),
        ("stepgrid.sqlite3-wal", "is the database's WAL file"),
        ("stepgrid.sqlite3-shm", "is the database's shared-memory file"),
        ("stepgrid.sqlite3-journal", "is the database's journal"),
        ("././stepgrid.sqlite3.lock", "is the database's lock file"),
    ],
)
def test_a_target_that_cannot_be_written_is_one_line_and_exit_2(
    database_path: Path, capsys: pytest.CaptureFixture[str], target: str, problem: str
) -> None:
    before = database_path.read_bytes()
    status, line = backup_line(capsys, target, "--force")
    assert status == 2
    assert "\n" not in line and problem in line, line
    assert database_path.read_bytes() == before


def test_a_backup_onto_the_running_bots_lock_file_is_refused_and_its_lock_still_holds(
    database_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with database_lock(database_path) as lock:  # what `stepgrid run` holds
        status, line = backup_line(capsys, lock.name, "--force")
        assert status == 2
        assert "\n" not in line and "is the database's lock file" in line, line
        with pytest.raises(DatabaseInUse), database_lock(database_path):  # a second bot is still refused
            pass


def test_an_existing_backup_is_replaced_only_with_force(
    database_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = database_path.parent / "old-backup.sqlite3"
    old.write_bytes(b"last week's backup")

    status, line = backup_line(capsys, str(old))
    assert (status, old.read_bytes()) == (2, b"last week's backup")
    assert "already exists; add --force to replace it" in line

    status, line = backup_line(capsys, str(old), "--force")
    assert status == 0, line
    assert rows(old) == ("ok", [])


def test_a_missing_database_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_DATABASE_PATH", str(tmp_path / "nope.sqlite3"))
    monkeypatch.chdir(tmp_path)
    status, line = backup_line(capsys, str(tmp_path / "copy.sqlite3"))
    assert status == 2
    assert "No database at" in line and "nope.sqlite3" in line
    assert not (tmp_path / "copy.sqlite3").exists()


@pytest.mark.parametrize("folder", ["data#1", "what?", "50%25 full"])
async def test_a_database_in_a_folder_named_with_uri_characters_is_backed_up_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], folder: str
) -> None:
    # A "#" or "?" in the path once ended SQLite's file name early: an empty database was "backed up".
    path = tmp_path / folder / "stepgrid.sqlite3"
    path.parent.mkdir()
    database = Database(path, Settings(_env_file=None))  # type: ignore[call-arg]
    await database.start()
    job = await database.ledger.record_job(GenerateRequest(prompt="kept", steps=4), user_id=1, channel_id=2, guild_id=3)
    await database.close()
    monkeypatch.setenv("STEPGRID_DATABASE_PATH", str(path))
    monkeypatch.chdir(tmp_path)

    status, line = backup_line(capsys, str(tmp_path / "copy.sqlite3"))

    assert status == 0, line
    assert rows(tmp_path / "copy.sqlite3") == ("ok", [job.id])
    assert sorted(os.listdir(tmp_path)) == sorted([folder, "copy.sqlite3"])  # no stray empty database made
