"""What members used, read from the ledger (bot.storage.usage): the quota figures."""

from __future__ import annotations

from datetime import timedelta

from bot.storage.database import Database
from inference.protocol import GeneratedImage, JobFailed, JobResult
from inference.requests import GenerateRequest
from tests.bot.fakes import ALICE, BOB, GUILD, OTHER_GUILD, all_jobs, record
from tests.bot.fakes import FakeWallClock as FakeClock

# --- quota figures -------------------------------------------------------------------------------


async def test_steps_used_today_counts_what_ran_and_what_is_waiting(db: Database, clock: FakeClock) -> None:
    yesterday = await record(db, steps=50)
    await db.ledger.mark_running(yesterday.id)
    await db.ledger.mark_done(yesterday.id, gpu_seconds=1, queue_seconds=0, steps_run=50)
    clock.advance(hours=12)  # 00:00 UTC: a new quota day

    finished = await record(db, steps=30)
    await db.ledger.mark_running(finished.id)
    await db.ledger.mark_done(finished.id, gpu_seconds=1, queue_seconds=0, steps_run=30)
    cancelled = await record(db, steps=40)
    await db.ledger.mark_running(cancelled.id)
    await db.ledger.mark_finished(cancelled.id, JobFailed(cancelled.id, "Cancelled.", cancelled=True, steps_run=5))
    await record(db, steps=20, count=2)  # queued: counts what it will use
    await record(db, user=BOB, steps=25)
    await record(db, guild=OTHER_GUILD, steps=25)
    await record(db, guild=None, steps=10)

    assert await db.ledger.steps_used_today(GUILD, ALICE) == 30 + 5 + 40
    assert await db.ledger.steps_used_today(GUILD, BOB) == 25
    assert await db.ledger.steps_used_today(None, ALICE) == 10
    assert await db.ledger.steps_used_today(GUILD, ALICE, now=clock.now - timedelta(hours=1)) == 50


async def test_active_jobs_are_the_queued_and_running_ones_with_their_requests(db: Database) -> None:
    jobs = [await record(db, steps=20 + n) for n in range(4)]
    await db.ledger.mark_running(jobs[0].id)
    await db.ledger.mark_running(jobs[1].id)
    await db.ledger.mark_done(jobs[1].id, gpu_seconds=1, queue_seconds=0, steps_run=30)
    await db.ledger.mark_finished(jobs[2].id, JobFailed(jobs[2].id, "Cancelled.", cancelled=True))
    await record(db, user=BOB)

    asked = [GenerateRequest("a lighthouse", steps=steps) for steps in (20, 23)]
    active = [job.to_request() for job in await db.ledger.active_jobs(GUILD, ALICE)]
    assert sorted(active, key=lambda request: request.steps) == asked  # created together: any order
    assert len(await db.ledger.active_jobs(GUILD, BOB)) == 1
    assert len(await db.ledger.active_jobs(OTHER_GUILD, ALICE)) == 0


async def test_a_delivering_job_keeps_its_figures_and_counts_as_unfinished_until_recorded(db: Database) -> None:
    job = await record(db, steps=30)
    await db.ledger.mark_running(job.id)
    image = GeneratedImage(b"png", seed=1, steps=30, width=512, height=512, seconds=1.0)
    assert await db.ledger.mark_delivering(job.id, JobResult(job.id, (image,), gpu_seconds=2.0, queue_seconds=0.5))
    assert len(await db.ledger.active_jobs(GUILD, ALICE)) == 1  # the upload may not have happened yet
    [unfinished] = await db.ledger.unfinished_jobs()
    assert (unfinished.status, unfinished.steps_run, unfinished.gpu_seconds) == ("delivering", 30, 2.0)
    assert await db.ledger.mark_delivered(job.id)  # recovery saw the result on its message
    [done] = await all_jobs(db)
    assert (done.status, done.steps_run, done.gpu_seconds, done.interaction_token) == ("done", 30, 2.0, None)
    assert len(await db.ledger.active_jobs(GUILD, ALICE)) == 0


async def test_a_job_found_delivered_without_its_figures_counts_the_steps_it_asked_for(db: Database) -> None:
    job = await record(db, steps=30, count=2)
    await db.ledger.mark_running(job.id)  # the write before the upload failed: no figures
    assert await db.ledger.mark_delivered(job.id)
    [done] = await all_jobs(db)
    assert (done.status, done.steps_run) == ("done", 60)
