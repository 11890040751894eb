"""Start-up recovery: which leftover jobs run again, which are answered as failed, and why."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, cast

import discord
import pytest
import sqlalchemy as sa

from bot.jobs.recovery import MAX_AGE, MAX_ATTEMPTS, recover_jobs, why_not_rerun
from bot.jobs.service import JobService
from bot.sharding import ShardRange
from bot.storage.database import Database
from bot.storage.inputs import InputImageMissing
from bot.storage.job_store import JobRecord, record_of
from bot.storage.models import JobRow
from inference.protocol import JobResult
from inference.requests import GenerateRequest, HiresFix
from tests.bot.fakes import FakeClient, FakeWallClock, Harness, Recorder, RecordingJobs

CHANNEL, GUILD, ALICE = 500, 1000, 11


async def leftover(db: Database, *, steps: int = 20, running: bool = False, message_id: int | None = None) -> JobRow:
    job = await db.ledger.record_job(
        GenerateRequest("a lighthouse", steps=steps),
        user_id=ALICE,
        channel_id=CHANNEL,
        guild_id=GUILD,
        message_id=message_id,
    )
    if running:
        await db.ledger.mark_running(job.id)
    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    return stored


async def recover(db: Database, jobs: RecordingJobs) -> Any:
    client = cast(discord.Client, FakeClient(Recorder(lambda: 0.0)))
    return await recover_jobs(client, db, cast(JobService, jobs))


# --- why_not_rerun ---------------------------------------------------------------------------------


async def test_a_fresh_job_runs_again(db: Database, clock: FakeWallClock) -> None:
    job = await leftover(db, running=True)
    assert why_not_rerun(job, now=clock.now + timedelta(minutes=5)) is None


async def test_a_job_the_bot_went_down_during_twice_is_not_run_a_third_time(db: Database, clock: FakeWallClock) -> None:
    job = await leftover(db, running=True)
    job.attempts = MAX_ATTEMPTS
    reason = why_not_rerun(job, now=clock.now)
    assert reason is not None and f"stopped {MAX_ATTEMPTS} times" in reason and "fewer steps" in reason


async def test_a_job_older_than_an_hour_is_not_run(db: Database, clock: FakeWallClock) -> None:
    job = await leftover(db)
    assert why_not_rerun(job, now=clock.now + MAX_AGE) is None
    reason = why_not_rerun(job, now=clock.now + MAX_AGE + timedelta(seconds=1))
    assert reason is not None and "waited too long" in reason


# --- recover_jobs --------------------------------------------------------------------------------


async def test_queued_and_running_jobs_are_requeued_oldest_first(db: Database, clock: FakeWallClock) -> None:
    queued = await leftover(db)
    clock.advance(seconds=30)
    running = await leftover(db, running=True)
    clock.advance(seconds=60)
    jobs = RecordingJobs()

    recovered = await recover(db, jobs)

    assert recovered.requeued == (queued.id, running.id) and recovered.failed == ()
    assert [(record.job_id, age) for record, age in jobs.resumed] == [(queued.id, 90.0), (running.id, 60.0)]
    assert jobs.resumed[0][0] == record_of(queued)
    rows = [await db.ledger.get_job(job.id) for job in (queued, running)]
    assert [(row.status, row.attempts) for row in rows if row is not None] == [("queued", 0), ("queued", 1)]


async def test_finished_jobs_are_left_alone(db: Database) -> None:
    job = await leftover(db, running=True)
    await db.ledger.mark_finished(job.id, JobResult(job.id, images=(), gpu_seconds=1.0))
    jobs = RecordingJobs()
    recovered = await recover(db, jobs)
    assert (recovered.requeued, recovered.failed, jobs.resumed, jobs.failed) == ((), (), [], [])


async def test_a_job_that_should_not_run_again_is_answered_with_the_reason(db: Database, clock: FakeWallClock) -> None:
    job = await leftover(db)
    clock.advance(hours=2)
    jobs = RecordingJobs()
    recovered = await recover(db, jobs)
    assert recovered.failed == (job.id,) and jobs.resumed == []
    ((record, reason, token_age),) = jobs.failed
    assert record.job_id == job.id and "waited too long" in reason and token_age == 7200.0


async def test_a_job_this_version_cannot_read_is_failed_in_the_ledger(db: Database) -> None:
    job = await leftover(db)

    async def garble(session: Any) -> None:
        await session.execute(sa.update(JobRow).where(JobRow.id == job.id).values(command="paint"))

    await db.write(garble)
    jobs = RecordingJobs()
    recovered = await recover(db, jobs)
    assert recovered.failed == (job.id,) and jobs.failed == [] and jobs.resumed == []
    row = await db.ledger.get_job(job.id)
    assert (
        row is not None
        and row.status == "failed"
        and row.error == "Stepgrid was updated and could not read this job again."
    )


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_the_attempt_limit_can_be_set(db: Database, max_attempts: int) -> None:
    job = await leftover(db, running=True)
    jobs = RecordingJobs()
    client = cast(discord.Client, FakeClient(Recorder(lambda: 0.0)))
    recovered = await recover_jobs(client, db, cast(JobService, jobs), max_attempts=max_attempts)
    assert (recovered.failed if max_attempts == 1 else recovered.requeued) == (job.id,)


# --- the job service's side: a request this version refuses --------------------------------------


async def test_a_resumed_request_the_checks_now_refuse_is_answered_as_failed() -> None:
    harness = Harness()
    record = JobRecord("job1", GenerateRequest("fox", steps=0), ALICE, GUILD, CHANNEL, "imagine")
    await harness.store.record(record)
    client = cast(discord.Client, harness.interaction().client)
    await harness.service.resume(client, record, token_age=10_000.0)
    assert harness.queue.requests == {}
    assert harness.store.status["job1"] == "failed"


async def delivering(db: Database) -> JobRow:
    """A job whose result was being uploaded when the bot died: its message id and figures are recorded."""
    job = await leftover(db, running=True, message_id=777)
    await db.ledger.mark_delivering(job.id, JobResult(job.id, (), gpu_seconds=1.0))
    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    return stored


async def test_a_job_whose_result_is_already_on_its_message_is_recorded_done_not_run_again(db: Database) -> None:
    job = await delivering(db)
    jobs = RecordingJobs(delivered=True)
    recovered = await recover(db, jobs)
    assert recovered.delivered == (job.id,) and jobs.resumed == [] and jobs.failed == []
    done = await db.ledger.get_job(job.id)
    assert done is not None and done.status == "done"


@pytest.mark.parametrize("found", [False, None])  # not there, or the message can't be read: run it again
async def test_a_job_whose_result_is_not_on_its_message_runs_again(db: Database, found: bool | None) -> None:
    job = await delivering(db)
    jobs = RecordingJobs(delivered=found)
    recovered = await recover(db, jobs)
    assert recovered.requeued == (job.id,) and [record.job_id for record, _ in jobs.resumed] == [job.id]
    again = await db.ledger.get_job(job.id)
    assert again is not None and again.status == "queued"


async def test_a_queued_job_whose_result_is_on_its_message_is_recorded_done_not_run_again(db: Database) -> None:
    # A database restored from a backup holds jobs as queued that were answered after the backup.
    job = await leftover(db, message_id=777)
    jobs = RecordingJobs(delivered=True)
    recovered = await recover(db, jobs)
    assert jobs.looked_at == [job.id] and recovered.delivered == (job.id,) and jobs.resumed == []
    done = await db.ledger.get_job(job.id)
    assert done is not None and done.status == "done"


# --- img2img: the input image waits on disk -------------------------------------------------------


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def test_an_img2img_job_left_running_runs_again_with_the_same_input_image(db: Database) -> None:
    request = GenerateRequest("a lighthouse", steps=20, image=PNG, strength=0.6, hires=HiresFix(steps=8))
    job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=GUILD)
    await db.ledger.mark_running(job.id)
    stored = await db.ledger.get_job(job.id)
    assert stored is not None and "image" not in stored.params
    assert (stored.params["image_bytes"], stored.params["image_sha256"]) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    jobs = RecordingJobs()
    recovered = await recover(db, jobs)
    assert recovered.requeued == (job.id,)
    assert jobs.resumed[0][0].request == request
    await db.ledger.mark_finished(job.id, JobResult(job.id, images=(), gpu_seconds=1.0))
    assert not db.inputs.path(job.id).exists(), "a finished job's input image is removed"


async def test_an_img2img_job_whose_input_image_is_gone_is_answered_as_failed(db: Database) -> None:
    request = GenerateRequest("a lighthouse", steps=20, image=PNG, strength=0.6)
    job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=GUILD)
    db.inputs.path(job.id).unlink()
    jobs = RecordingJobs()
    recovered = await recover(db, jobs)
    assert recovered.failed == (job.id,) and not jobs.resumed
    row = await db.ledger.get_job(job.id)
    assert row is not None and row.status == "failed" and "send the image again" in (row.error or "")
    with pytest.raises(InputImageMissing):
        record_of(row, db.inputs)


# --- shards: each process recovers its own servers' jobs ------------------------------------------


async def test_a_process_recovers_only_the_jobs_of_servers_on_its_shards_and_dms_on_shard_0(db: Database) -> None:
    count = 4
    jobs_by_shard: dict[int | None, str] = {}
    for shard in range(count):
        guild = ((1_000_000 + shard) << 22) | 5  # (guild >> 22) % 4 == shard
        job = await db.ledger.record_job(
            GenerateRequest("a lighthouse"), user_id=ALICE, channel_id=CHANNEL, guild_id=guild
        )
        jobs_by_shard[shard] = job.id
    direct = await db.ledger.record_job(
        GenerateRequest("a lighthouse"), user_id=ALICE, channel_id=CHANNEL, guild_id=None
    )

    client = cast(discord.Client, FakeClient(Recorder(lambda: 0.0)))
    first, second = RecordingJobs(), RecordingJobs()
    await recover_jobs(client, db, cast(JobService, first), shards=ShardRange(count, (0, 1)))
    await recover_jobs(client, db, cast(JobService, second), shards=ShardRange(count, (2, 3)))

    assert {record.job_id for record, _ in first.resumed} == {jobs_by_shard[0], jobs_by_shard[1], direct.id}
    assert {record.job_id for record, _ in second.resumed} == {jobs_by_shard[2], jobs_by_shard[3]}
    assert not first.failed and not second.failed


async def test_a_process_running_every_shard_recovers_every_job(db: Database) -> None:
    for guild in (GUILD, None):
        await db.ledger.record_job(GenerateRequest("a lighthouse"), user_id=ALICE, channel_id=CHANNEL, guild_id=guild)
    jobs = RecordingJobs()
    await recover(db, jobs)
    assert len(jobs.resumed) == 2
