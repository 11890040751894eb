"""Kill -9 the bot with jobs queued and running, start it again: each of those jobs is answered.

The bot runs as a real subprocess (`stepgrid run`) against the fake Discord in this process, pointed
at it by STEPGRID_DISCORD_API_BASE / STEPGRID_DISCORD_GATEWAY_URL. Waits are on what the fake records
and on the bot's own log lines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.bot_process import STEPGRID, WORKER_READY, BotProcess, bot_env
from tests.e2e.helpers import content, result_files, wait_for_progress, wait_for_result
from tests.fake_discord import FakeDiscord, InteractionHandle, RecordedRequest

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# Twelve cells of 139..150 steps at 512x512 on a one-lane worker: still running while a backup is taken.
SLOW_STEPS = ",".join(str(steps) for steps in range(139, 151))
SLOW_GRID: tuple[str, dict[str, object]] = ("compare-steps", {"steps": SLOW_STEPS, "size": "512"})
# One image of 150 steps: still running when the bot sees its first steps, a twelfth of the grid's time
# (what a job re-run after a kill or a restart costs).
SLOW_IMAGE: tuple[str, dict[str, object]] = ("imagine", {"steps": 150, "size": "512"})


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(timeout=180.0)  # a hang guard for a CPU-bound worker, not a timing expectation
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    fake.assert_no_unknown_routes()


def job_rows(database: Path) -> dict[str, tuple[str | None, str, int]]:
    """job id -> (interaction token, status, attempts) of every job in the ledger."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT id, interaction_token, status, attempts FROM jobs").fetchall()
    return {job_id: (token, status, attempts) for job_id, token, status, attempts in rows}


def job_id_of(rows: dict[str, tuple[str | None, str, int]], handle: InteractionHandle) -> str:
    """The id of the job this interaction started (its row still holds the token: unfinished)."""
    [job_id] = [job_id for job_id, (token, _, _) in rows.items() if token == handle.token]
    return job_id


def answered(fake: FakeDiscord, handle: InteractionHandle) -> RecordedRequest | None:
    """The request that answered this job after the restart: its image, or a failure note."""
    original = handle.original_message
    assert original is not None
    for request in handle.requests:
        if not request.ok:
            continue
        image = any(f.filename.startswith("stepgrid-") for f in request.files)
        if request.method == "PATCH" and request.path.endswith(f"/messages/{original['id']}") and image:
            return request
        if request.is_followup and request.ephemeral and "could not be made" in (content(request) or ""):
            return request
    return None


async def one_running_one_queued(
    fake: FakeDiscord, bot: BotProcess, *, seed: int, slow: tuple[str, dict[str, object]] = SLOW_GRID
) -> tuple[InteractionHandle, InteractionHandle]:
    """Once the worker is ready: a slow job (a grid, or `slow`) that is running, and an /imagine queued behind it."""
    await bot.wait_for_log(WORKER_READY, within=fake.timeout)
    command, options = slow
    running = await fake.invoke(command, {"prompt": "a slow one", **options, "seed": seed}, user=fake.member)
    await wait_for_progress(running, "step ")
    queued = await fake.invoke("imagine", {"prompt": "a quick one", "steps": 4, "size": "256", "seed": seed + 1},
                               user=fake.admin)  # fmt: skip
    await wait_for_progress(queued, "Queued")
    return running, queued


async def test_kill_9_with_jobs_queued_and_running_then_a_restart_answers_each_of_them(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    bot = BotProcess(bot_env(fake, database, model_cache_dir), tmp_path / "bot.log")
    await bot.start()
    try:
        running, queued = await one_running_one_queued(fake, bot, seed=1, slow=SLOW_IMAGE)

        await bot.kill(signal.SIGKILL)
        before = await asyncio.to_thread(job_rows, database)
        running_id, queued_id = job_id_of(before, running), job_id_of(before, queued)
        assert before == {running_id: (running.token, "running", 1), queued_id: (queued.token, "queued", 0)}
        assert answered(fake, running) is None and answered(fake, queued) is None

        await bot.start()
        for handle in (running, queued):
            reply = await handle.wait_for(lambda r, handle=handle: answered(fake, handle) is r)
            assert reply.files, f"a job was answered with a failure: {content(reply)}"
        for job_id in (running_id, queued_id):  # logged once the ledger has the result
            await bot.wait_for_log(f"job {job_id} done", within=fake.timeout)
        assert await asyncio.to_thread(job_rows, database) == {  # finished: no token kept
            running_id: (None, "done", 2),
            queued_id: (None, "done", 1),
        }
        assert any("recovered 2 job(s) left by the last run: 2 re-queued" in line for line in bot.lines)
    finally:
        await bot.kill(signal.SIGKILL)


async def sigterm(fake: FakeDiscord, bot: BotProcess) -> None:
    """What `docker stop` does: SIGTERM to the bot alone; it exits 0 once it has stopped gracefully."""
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(fake.timeout):  # a hang guard, not a timing expectation
        assert await bot.exited() == 0
    assert any("SIGTERM received" in line for line in bot.lines)


async def test_sigterm_lets_the_running_job_finish_and_leaves_the_waiting_one_for_the_next_start(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    env = {**bot_env(fake, database, model_cache_dir), "STEPGRID_SHUTDOWN_GRACE_SECONDS": "600"}  # a hang guard
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        running, queued = await one_running_one_queued(fake, bot, seed=3, slow=SLOW_IMAGE)
        await sigterm(fake, bot)

        rows = await asyncio.to_thread(job_rows, database)
        queued_id = job_id_of(rows, queued)
        [running_id] = [job_id for job_id in rows if job_id != queued_id]
        assert rows == {running_id: (None, "done", 1), queued_id: (queued.token, "queued", 0)}
        assert result_files(await wait_for_result(running))  # finished within the grace period, delivered
        await wait_for_progress(queued, "restarting")  # the waiting one is told it runs after the restart

        await bot.start()
        reply = await queued.wait_for(lambda r: answered(fake, queued) is r)
        assert reply.files, f"the waiting job was answered with a failure: {content(reply)}"
        assert len([r for r in running.requests if result_files(r)]) == 1
    finally:
        await bot.kill(signal.SIGKILL)


async def test_sigterm_after_the_grace_period_leaves_the_running_job_too_for_the_next_start(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    env = {**bot_env(fake, database, model_cache_dir), "STEPGRID_SHUTDOWN_GRACE_SECONDS": "0"}
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        running, queued = await one_running_one_queued(fake, bot, seed=9, slow=SLOW_IMAGE)
        await sigterm(fake, bot)

        rows = await asyncio.to_thread(job_rows, database)
        running_id, queued_id = job_id_of(rows, running), job_id_of(rows, queued)
        # Neither failed: both queued for the next start, the run the deploy cut short not counted as an attempt.
        assert rows == {running_id: (running.token, "queued", 0), queued_id: (queued.token, "queued", 0)}
        for handle in (running, queued):
            await wait_for_progress(handle, "restarting")

        await bot.start()
        for handle in (running, queued):
            reply = await handle.wait_for(lambda r, handle=handle: answered(fake, handle) is r)
            assert reply.files, f"a job was answered with a failure: {content(reply)}"
        assert any("recovered 2 job(s) left by the last run: 2 re-queued" in line for line in bot.lines)
    finally:
        await bot.kill(signal.SIGKILL)


async def test_kill_9_between_the_result_upload_and_the_ledger_write_posts_the_result_once(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    bot = BotProcess(bot_env(fake, database, model_cache_dir), tmp_path / "bot.log")
    await bot.start()
    try:
        await bot.wait_for_log(WORKER_READY, within=fake.timeout)
        # Discord takes the result, but its answer never reaches the bot: killed before the ledger write.
        release = fake.hold_answers(lambda r: r.method == "PATCH" and bool(result_files(r)))
        handle = await fake.invoke("imagine", {"prompt": "delivered once", "steps": 4, "size": "256", "seed": 5})
        await handle.wait_for(lambda r: bool(result_files(r)))
        await bot.kill(signal.SIGKILL)
        release.set()
        [(job_id, (_, status, _))] = (await asyncio.to_thread(job_rows, database)).items()
        assert status == "delivering"

        await bot.start()
        await bot.wait_for_log("recovered 1 job(s) left by the last run", within=fake.timeout)
        await bot.wait_for_log(WORKER_READY, within=fake.timeout)
        # One lane, first come first served: once this job is answered, a second run of the first would be too.
        later = await fake.invoke("imagine", {"prompt": "after the restart", "steps": 2, "size": "256", "seed": 6})
        await wait_for_result(later)
        assert len([r for r in handle.requests if result_files(r)]) == 1
        assert (await asyncio.to_thread(job_rows, database))[job_id] == (None, "done", 1)
    finally:
        await bot.kill(signal.SIGKILL)


async def test_restoring_a_backup_taken_mid_burst_posts_no_job_a_second_time(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    env = bot_env(fake, database, model_cache_dir)
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        running, queued = await one_running_one_queued(fake, bot, seed=7)
        # The documented procedure: a backup while the bot runs (one job running, one queued in it) ...
        copy = await asyncio.create_subprocess_exec(str(STEPGRID), "db", "backup", str(backup), env=env, cwd=tmp_path)
        assert await copy.wait() == 0
        backed_up = await asyncio.to_thread(job_rows, backup)
        running_id, queued_id = job_id_of(backed_up, running), job_id_of(backed_up, queued)
        for job_id in (running_id, queued_id):  # ... both answered after it ...
            await bot.wait_for_log(f"job {job_id} done", within=fake.timeout)
        await bot.kill(signal.SIGKILL)
        # ... and restored: stop the bot, copy the backup over the database, start it again.
        assert backed_up == {
            running_id: (running.token, "running", 1),
            queued_id: (queued.token, "queued", 0),
        }
        database.write_bytes(backup.read_bytes())

        await bot.start()
        await bot.wait_for_log("recovered 2 job(s) left by the last run", within=fake.timeout)
        assert any("0 re-queued, 0 answered as failed, 2 already delivered" in line for line in bot.lines)
        assert await asyncio.to_thread(job_rows, database) == {
            running_id: (None, "done", 1),
            queued_id: (None, "done", 0),
        }
        for handle in (running, queued):
            assert len([r for r in handle.requests if result_files(r)]) == 1
    finally:
        await bot.kill(signal.SIGKILL)
