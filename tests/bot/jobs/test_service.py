"""JobService (bot.jobs.service): closing, a planned shutdown, and resuming a job after a restart."""

from __future__ import annotations

import dataclasses
from typing import cast

import discord
import pytest

from bot.errors import UserFacingError
from bot.job_requests import RequestOptions
from bot.storage.database import Database
from bot.storage.job_store import record_of
from inference.protocol import JobFailed, JobStarted
from tests.bot.fakes import FLUX, IMAGINE, Harness, database_harness
from tests.bot.jobs.service_helpers import ended, shown, start_while_loading


async def test_closing_the_service_waits_for_every_job_to_be_answered(harness: Harness) -> None:
    tasks = [(await harness.start(IMAGINE))[2] for _ in range(3)]
    await harness.queue.close()
    await harness.service.close()
    assert all(task.done() for task in tasks)
    assert sorted(harness.store.status.values()) == ["failed"] * 3


async def test_a_planned_shutdown_leaves_waiting_and_running_jobs_queued_and_says_so(database: Database) -> None:
    harness = database_harness(database)
    running_id, running_interaction, running_task = await harness.start(IMAGINE)
    queued_id, queued_interaction, queued_task = await harness.start(dataclasses.replace(IMAGINE, seed=5678))
    harness.queue.emit(JobStarted(running_id, 1))
    await queued_interaction.recorder.wait_for(lambda calls: any(c.kind == "edit" for c in calls))

    harness.service.begin_shutdown(keep_queued=True)  # the grace period is over: the queue closes
    await harness.queue.close()
    await harness.service.close()

    assert running_task.done() and queued_task.done()
    running, queued = await database.ledger.get_job(running_id), await database.ledger.get_job(queued_id)
    # Both run at the next start; the run the planned stop cut short is not counted as an attempt.
    assert running is not None and (running.status, running.attempts, running.finished_at) == ("queued", 0, None)
    assert queued is not None and (queued.status, queued.finished_at) == ("queued", None)
    for interaction in (running_interaction, queued_interaction):
        note = interaction.recorder.calls[-1]
        assert note.kind == "edit" and "restarting" in (note.content or "") and note.view is None
        assert interaction.recorder.of("delete", "followup") == []


async def test_a_command_sent_once_a_planned_shutdown_began_is_refused_saying_the_bot_restarts(
    database: Database,
) -> None:
    harness = database_harness(database)
    harness.service.stop_accepting()
    with pytest.raises(UserFacingError, match="Stepgrid is restarting; try again in a minute"):
        await harness.start(IMAGINE)
    assert await database.ledger.unfinished_jobs() == []


async def test_a_shutdown_while_the_models_load_leaves_the_held_job_queued_with_its_options(
    database: Database,
) -> None:
    harness = database_harness(database, ready=False)
    interaction, task = await start_while_loading(harness, seed=3)
    [job_id] = [row.id for row in await database.ledger.unfinished_jobs()]
    harness.service.begin_shutdown(keep_queued=True)
    await ended(task)
    await shown(interaction, "Stepgrid is restarting")
    row = await database.ledger.get_job(job_id)
    assert row is not None and row.status == "queued"
    record = record_of(row)
    assert record.options == RequestOptions("a fox", seed=3)

    # The next start: recovery resumes it, and it is built for its model once that is known.
    restarted = database_harness(database, ready=False)
    client = cast(discord.Client, restarted.interaction().client)
    # (its interaction expired meanwhile: the answer goes to the channel)
    task = restarted.service.resume(client, dataclasses.replace(record, interaction_token=None), token_age=900.0)
    default = (await restarted.service.limits(record.guild_id)).default_model
    restarted.queue.finish_loading(dataclasses.replace(FLUX, name=default))  # a FLUX model as the default
    [queued] = await restarted.queue.wait_for_jobs(1)
    request = restarted.queue.requests[queued]
    assert (request.model, request.scheduler, request.steps, request.width) == (default, "Euler", 28, 1024)
    assert request.seed == 3
    row = await database.ledger.get_job(job_id)
    assert row is not None and row.to_request() == request and record_of(row).options is None
    assert (row.scheduler, row.model, row.steps_requested) == ("Euler", default, 28)
    restarted.queue.emit(JobFailed(job_id, "stopped"))
    await ended(task)
