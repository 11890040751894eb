"""The job ledger: each job's row from queued to finished, crash leftovers (quota figures: test_usage.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Settings
from bot.storage.database import Database
from bot.storage.ledger import LedgerJobMissing
from inference.protocol import GeneratedImage, JobFailed, JobResult
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest
from tests.bot.backends import Backend
from tests.bot.fakes import ALICE, BOB, CHANNEL, GUILD, all_jobs, record
from tests.bot.fakes import FakeWallClock as FakeClock

# --- the job ledger ------------------------------------------------------------------------------


async def test_a_recorded_job_rebuilds_its_exact_request(db: Database) -> None:
    imagine = GenerateRequest(
        prompt="a red fox, snow",
        steps=25,
        scheduler="DPM++ 2M Karras",
        seed=4_000_000_000,
        guidance=6.5,
        width=768,
        height=512,
        negative_prompt="blurry",
        count=3,
    )
    compare = CompareStepsRequest(prompt="a fox", steps=(4, 8, 16), scheduler="Heun", seed=7, guidance=0.0)

    for request in (imagine, compare):
        job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=None)
        stored = await db.ledger.get_job(job.id)
        assert stored is not None
        assert stored.to_request() == request
        assert stored.status == "queued"
        assert stored.guild_id is None


async def test_a_job_row_holds_what_a_restarted_bot_needs_to_answer(db: Database, clock: FakeClock) -> None:
    job = await record(db, count=2, steps=20, message_id=777)

    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert (stored.application_id, stored.interaction_token) == (42, "token-abc")
    assert (stored.message_id, stored.message_channel_id) == (777, CHANNEL)
    assert stored.created_at == clock.now
    assert (stored.command, stored.scheduler, stored.images, stored.steps_requested) == ("imagine", "Euler a", 2, 40)


async def test_a_finished_job_is_one_row_with_its_figures(db: Database, clock: FakeClock) -> None:
    job = await record(db)
    clock.advance(seconds=3)
    assert await db.ledger.mark_running(job.id)
    clock.advance(seconds=2)
    assert await db.ledger.mark_done(job.id, gpu_seconds=1.25, queue_seconds=3.0, steps_run=30)

    rows = await all_jobs(db)
    assert len(rows) == 1
    done = rows[0]
    assert (done.status, done.attempts, done.gpu_seconds, done.queue_seconds, done.steps_run, done.error) == (
        "done",
        1,
        1.25,
        3.0,
        30,
        None,
    )
    assert done.started_at == datetime(2026, 3, 14, 12, 0, 3, tzinfo=UTC)
    assert done.finished_at == datetime(2026, 3, 14, 12, 0, 5, tzinfo=UTC)


async def test_a_failed_job_is_one_row_with_its_error_and_figures(db: Database) -> None:
    job = await record(db)
    await db.ledger.mark_running(job.id)
    await db.ledger.mark_running(job.id)  # the worker crashed; the supervisor tried again
    await db.ledger.mark_finished(
        job.id, JobFailed(job.id, "The GPU worker crashed twice.", gpu_seconds=0.4, queue_seconds=1.0, steps_run=12)
    )

    rows = await all_jobs(db)
    assert len(rows) == 1
    failed = rows[0]
    assert (failed.status, failed.error, failed.attempts, failed.steps_run, failed.gpu_seconds) == (
        "failed",
        "The GPU worker crashed twice.",
        2,
        12,
        0.4,
    )
    assert failed.finished_at is not None


async def test_a_job_cancelled_while_queued_is_one_row_that_never_ran(db: Database) -> None:
    job = await record(db)
    await db.ledger.mark_finished(job.id, JobFailed(job.id, "Cancelled.", cancelled=True))

    rows = await all_jobs(db)
    assert len(rows) == 1
    assert (rows[0].status, rows[0].attempts, rows[0].started_at, rows[0].steps_run) == ("cancelled", 0, None, 0)


async def test_a_job_cancelled_while_running_keeps_the_steps_it_ran(db: Database) -> None:
    job = await record(db)
    await db.ledger.mark_running(job.id)
    await db.ledger.mark_finished(job.id, JobFailed(job.id, "Cancelled.", cancelled=True, steps_run=7, gpu_seconds=0.2))

    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.steps_run, stored.gpu_seconds) == ("cancelled", 7, 0.2)


@pytest.mark.parametrize(
    "outcome",
    [
        JobResult("id", images=(), gpu_seconds=1.0),
        JobFailed("id", "The worker crashed."),
        JobFailed("id", "Cancelled.", cancelled=True),
    ],
    ids=["done", "failed", "cancelled"],
)
async def test_a_finished_job_keeps_no_interaction_token(db: Database, outcome: JobResult | JobFailed) -> None:
    job = await record(db)
    assert job.interaction_token == "token-abc"
    await db.ledger.mark_finished(job.id, outcome)
    stored = await db.ledger.get_job(job.id)
    assert stored is not None and stored.interaction_token is None
    assert stored.application_id == 42  # not secret; kept


async def test_a_cancelled_job_counts_the_steps_it_ran_toward_the_quota(db: Database) -> None:
    job = await record(db, steps=150)
    await db.ledger.mark_running(job.id)
    cancelled = JobFailed(job.id, "Cancelled.", cancelled=True, gpu_seconds=9.5, steps_run=149, queue_seconds=0.25)
    await db.ledger.mark_finished(job.id, cancelled)

    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.steps_run, stored.gpu_seconds, stored.queue_seconds) == ("cancelled", 149, 9.5, 0.25)
    assert await db.ledger.steps_used_today(job.guild_id, job.user_id) == 149


async def test_a_failed_job_keeps_its_error_and_figures_from_the_queue(db: Database) -> None:
    job = await record(db)
    await db.ledger.mark_finished(
        job.id, JobFailed(job.id, "The GPU ran out of memory.", gpu_seconds=1.5, steps_run=12)
    )

    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.steps_run, stored.gpu_seconds) == (
        "failed",
        "The GPU ran out of memory.",
        12,
        1.5,
    )


async def test_the_queues_final_event_is_recorded_with_its_figures(db: Database) -> None:
    image = GeneratedImage(png=b"", seed=1, steps=20, width=512, height=512, seconds=0.5)
    done, failed, cancelled = (await record(db), await record(db), await record(db))

    await db.ledger.mark_finished(
        done.id, JobResult(done.id, images=(image, image), gpu_seconds=1.5, queue_seconds=2.0)
    )
    await db.ledger.mark_finished(failed.id, JobFailed(failed.id, "The model could not load."))
    await db.ledger.mark_finished(cancelled.id, JobFailed(cancelled.id, "Cancelled.", cancelled=True))

    rows = {job.id: job for job in await all_jobs(db)}
    assert (rows[done.id].status, rows[done.id].steps_run, rows[done.id].gpu_seconds) == ("done", 40, 1.5)
    assert rows[done.id].queue_seconds == 2.0
    assert (rows[failed.id].status, rows[failed.id].error) == ("failed", "The model could not load.")
    assert rows[cancelled.id].status == "cancelled"


async def test_a_button_job_remembers_what_started_it(db: Database) -> None:
    parent = await record(db)
    child = await db.ledger.record_job(
        GenerateRequest(prompt="a lighthouse", seed=99),
        user_id=BOB,
        channel_id=CHANNEL,
        guild_id=GUILD,
        origin="reroll",
        parent_job_id=parent.id,
    )

    stored = await db.ledger.get_job(child.id)
    assert stored is not None
    assert (stored.command, stored.origin, stored.parent_job_id) == ("imagine", "reroll", parent.id)
    assert (await db.ledger.get_job(parent.id)).origin == "imagine"  # type: ignore[union-attr]


async def test_a_finished_job_ignores_a_late_status_change(db: Database) -> None:
    job = await record(db)
    await db.ledger.mark_running(job.id)
    await db.ledger.mark_finished(job.id, JobFailed(job.id, "Cancelled.", cancelled=True))

    assert not await db.ledger.mark_done(job.id, gpu_seconds=1.0, queue_seconds=0.0, steps_run=30)
    assert not await db.ledger.mark_running(job.id)
    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert stored.status == "cancelled"
    assert stored.steps_run == 0


async def test_a_scheduler_grid_and_a_model_named_by_its_path_are_recorded_whole(db: Database) -> None:
    # Longer than the columns once said (32 and 100): SQLite never minded, PostgreSQL refused the write.
    schedulers = ("DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ SDE", "Euler a")
    model = "/srv/models/" + "checkpoints/" * 10 + "dreamshaper"
    request = CompareSchedulersRequest("a fox", schedulers=schedulers, steps=(4,), model=model)
    job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=GUILD)

    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert (stored.scheduler, stored.model) == ("DPM++ 2M Karras, DPM++ 2M SDE, DPM++ SDE, Euler a", model)
    assert stored.to_request() == request


async def test_an_unknown_job_is_an_error(db: Database) -> None:
    with pytest.raises(LedgerJobMissing):
        await db.ledger.mark_done("nope", gpu_seconds=0, queue_seconds=0, steps_run=0)
    assert await db.ledger.get_job("nope") is None


async def test_jobs_left_queued_or_running_by_a_crash_are_found_at_start_up(backend: Backend, clock: FakeClock) -> None:
    before = backend.database(clock=clock)
    await before.start()
    queued = await record(before)
    clock.advance(seconds=1)
    running = await record(before, user=BOB)
    await before.ledger.mark_running(running.id)
    done = await record(before)
    await before.ledger.mark_running(done.id)
    await before.ledger.mark_done(done.id, gpu_seconds=1, queue_seconds=0, steps_run=30)
    # The crash: no close(), the writer and connections just vanish.
    assert before._writer is not None
    before._writer.cancel()
    await asyncio.gather(before._writer, return_exceptions=True)
    await before.engine.dispose()

    after = backend.database(clock=clock)
    await after.start()
    unfinished = await after.ledger.unfinished_jobs()
    assert [(job.id, job.status) for job in unfinished] == [(queued.id, "queued"), (running.id, "running")]
    assert all(job.interaction_token == "token-abc" for job in unfinished)
    assert unfinished[1].to_request() == GenerateRequest(prompt="a lighthouse", steps=30)

    # Re-queue the one that was running: it keeps its attempt count for the 2-attempt rule.
    await after.ledger.mark_queued(running.id)
    requeued = await after.ledger.get_job(running.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == ("queued", 1)
    await after.close()


# --- images in: each job's kind and its input image (never the image) ----------------------------


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


async def test_each_job_records_its_kind_and_its_input_images_size_and_sha256(db: Database) -> None:
    import hashlib

    from inference.requests import HiresFix

    png = _png(320, 256)
    requests = {
        "text2img": (GenerateRequest("a fox"), "imagine"),
        "img2img": (GenerateRequest("a fox", image=png, strength=0.6), "imagine"),
        "vary": (GenerateRequest("a fox", image=png, strength=0.35), "vary"),
        "upscale": (GenerateRequest("a fox", image=png, strength=1.0, hires=HiresFix(steps=8)), "upscale"),
        "grid": (CompareStepsRequest("a fox", steps=(4, 8)), "compare-steps"),
        "img2img-grid": (CompareStepsRequest("a fox", steps=(4, 8), image=png), "compare-steps"),
    }
    for kind, (request, origin) in requests.items():
        job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=GUILD, origin=origin)
        stored = await db.ledger.get_job(job.id)
        assert stored is not None and stored.kind == kind
        if request.image:
            assert (stored.input_width, stored.input_height, stored.input_bytes) == (320, 256, len(png))
            assert stored.input_sha256 == hashlib.sha256(png).hexdigest()
            assert "image" not in stored.params
        else:
            assert (stored.input_sha256, stored.input_width, stored.input_bytes) == (None, None, None)


async def test_usage_by_kind_counts_each_kinds_jobs_steps_and_gpu_seconds(db: Database, clock: FakeClock) -> None:
    png = _png(256, 256)
    for request, origin, user in (
        (GenerateRequest("a fox", steps=10), "imagine", ALICE),
        (GenerateRequest("a fox", steps=10), "imagine", BOB),
        (GenerateRequest("a fox", steps=10, image=png, strength=0.5), "vary", ALICE),
    ):
        job = await db.ledger.record_job(request, user_id=user, channel_id=CHANNEL, guild_id=GUILD, origin=origin)
        await db.ledger.mark_done(job.id, gpu_seconds=2.0, queue_seconds=0.0, steps_run=5)
    server = await db.ledger.kind_totals(GUILD)
    assert [(t.kind, t.jobs, t.steps, t.gpu_seconds) for t in server] == [("text2img", 2, 10, 4.0), ("vary", 1, 5, 2.0)]
    alice = await db.ledger.kind_totals(GUILD, user_id=ALICE)
    assert [(t.kind, t.jobs) for t in alice] == [("text2img", 1), ("vary", 1)]
    usage = await db.ledger.server_usage(GUILD, since=None, until=clock.now + timedelta(hours=1))
    assert usage.by_kind == server


async def test_the_conversion_notes_of_an_input_image_are_kept_with_the_job(db: Database) -> None:
    from bot.storage.job_store import record_of

    request = GenerateRequest("a fox", image=_png(256, 256), strength=0.5)
    notes = ("it was converted from CMYK to RGB", "it is animated: the first frame was used")
    job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=GUILD, notes=notes)
    stored = await db.ledger.get_job(job.id)
    assert stored is not None
    assert record_of(stored, db.inputs).notes == notes
    await db.ledger.set_request(job.id, request)  # a held job built for its model keeps them
    stored = await db.ledger.get_job(job.id)
    assert stored is not None and record_of(stored, db.inputs).notes == notes


async def test_each_bot_process_recovers_only_its_own_jobs_and_a_dead_ones_move_once(
    backend: Backend, clock: FakeClock
) -> None:
    """Two bot processes on one ledger (PostgreSQL in practice): rows belong to the bot id that took them."""
    one, two = (backend.database(Settings(_env_file=None, bot_id=name), clock=clock) for name in ("bot-1", "bot-2"))  # type: ignore[call-arg]
    await one.start()
    await two.start()
    try:
        mine = await record(one)
        clock.advance(seconds=1)
        running = await record(one, user=BOB)
        await one.ledger.mark_running(running.id)
        finished = await record(one)
        await one.ledger.mark_finished(finished.id, JobFailed(finished.id, "no"))
        theirs = await record(two)
        assert [job.id for job in await one.ledger.unfinished_jobs()] == [mine.id, running.id]
        assert [job.id for job in await two.ledger.unfinished_jobs()] == [theirs.id]

        adopted = await two.ledger.adopt_jobs("bot-1")  # bot-1 died; bot-2 won the claim on Redis
        assert [(job.id, job.status, job.bot_id) for job in adopted] == [
            (mine.id, "queued", "bot-2"),
            (running.id, "running", "bot-2"),
        ]
        assert await two.ledger.adopt_jobs("bot-1") == [], "a row moves once"
        assert await one.ledger.unfinished_jobs() == [], "bot-1's restart finds nothing of its own left"
        assert {job.id for job in await two.ledger.unfinished_jobs()} == {mine.id, running.id, theirs.id}
        stored = await one.ledger.get_job(finished.id)
        assert stored is not None and stored.bot_id == "bot-1"
    finally:
        await one.close()
        await two.close()
