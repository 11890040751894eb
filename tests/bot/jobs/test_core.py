"""The service's shared part (bot.jobs.core): the defaults without known models, the jobs counted as waiting."""

from __future__ import annotations

from tests.bot.fakes import SD15, Harness, model_harness, result_for
from tests.bot.jobs.service_helpers import ended, start_command, start_while_loading


async def test_without_known_models_the_request_names_no_model(harness: Harness) -> None:
    # A worker that has not reported its models (or an old one): the worker's default runs it.
    request = await start_command(harness)
    assert request.model == "" and (request.steps, request.scheduler) == (30, "Euler a")


async def test_jobs_held_while_the_models_load_count_as_waiting_until_they_are_answered() -> None:
    harness = model_harness(loading=True)
    _, first = await start_while_loading(harness, prompt="one")
    _, second = await start_while_loading(harness, prompt="two")
    assert harness.service.waiting_jobs() == 2 and len(harness.service.active_jobs) == 2
    harness.queue.finish_loading(SD15)
    job_ids = await harness.queue.wait_for_jobs(2)
    for job_id, task in zip(job_ids, (first, second), strict=True):
        harness.queue.emit(result_for(job_id, harness.queue.requests[job_id]))
        await ended(task)
    assert harness.service.waiting_jobs() == 0 and harness.service.active_jobs == frozenset()
