"""`/imagine auto_steps:` end to end: the real discord.py client against the fake Discord, the tiny model in
a real worker, a real ledger. The result says "auto → N steps", the PNG's Steps are the N that ran, and the
ledger (what quotas count) records N; a scheduler that never settles is refused before anything is queued."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from bot.pictures.render import png_parameters
from bot.storage.database import Database
from bot.storage.models import JobRow
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import embed_fields, refusal, running_bot, wait_for_result
from tests.fake_discord import FakeDiscord

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MOST = 12


async def all_jobs(database: Database) -> list[JobRow]:
    async with database.sessions() as session:
        return list(await session.scalars(sa.select(JobRow).order_by(JobRow.created_at)))


def imagine(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"prompt": "a red fox in the snow", "steps": MOST, "auto_steps": True, "size": "256",
                               "scheduler": "Euler", "seed": 8}  # fmt: skip
    options.update(overrides)
    return options


async def test_imagine_with_auto_steps_says_the_steps_that_ran_and_the_ledger_counts_them(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        final = await wait_for_result(await fake.invoke("imagine", imagine()))

    steps = embed_fields(final)["Steps"]
    assert steps.startswith("auto → ") and steps.endswith(
        f" steps (settled: the predicted clean image; at most {MOST})"
    )
    ran = int(steps.removeprefix("auto → ").split(" ")[0])
    assert ran < MOST
    parameters = png_parameters(final.files[0].data) or ""
    assert f"Steps: {ran}," in parameters and f"Auto steps: settled at {ran} of {MOST} steps" in parameters
    (job,) = await all_jobs(database)
    assert (job.command, job.status, job.steps_run, job.params["auto_steps"]) == ("imagine", "done", ran, True)


async def test_auto_steps_with_an_ancestral_scheduler_is_refused_in_one_line_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        line = await refusal(await fake.invoke("imagine", imagine(scheduler="Euler a")))
        assert queue.submitted == []
    assert line == (
        "steps: auto stops when the image settles, and Euler a adds fresh noise at every step, so it never does: "
        "choose a scheduler such as Euler or DPM++ 2M, or give a step count."
    )
    assert await all_jobs(database) == []
