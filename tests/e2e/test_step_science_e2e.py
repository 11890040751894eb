"""Step science end to end (`/compare-guidance`, `/compare-steps stop_early:`): the real discord.py client
against the fake Discord, the tiny model in a real worker, a real ledger. A guidance grid comes back with
the neighbour Δ in words and A1111's X/Y/Z fields; a stop-early grid with its two rows from one job; the
server's limits and values that can't make a grid are refused before anything is queued. Waits are on
what the fake records, never on sleeps."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from bot.pictures.render import png_parameters
from bot.storage.database import Database
from bot.storage.models import JobRow
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import content, embed_fields, image_of, refusal, running_bot, wait_for_result
from tests.fake_discord import FakeDiscord

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def all_jobs(database: Database) -> list[JobRow]:
    async with database.sessions() as session:
        return list(await session.scalars(sa.select(JobRow).order_by(JobRow.created_at)))


def grid(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"prompt": "a red fox", "guidance": "7, 1, 3", "steps": "2,3", "size": "256",
                               "scheduler": "Euler", "seed": 42}  # fmt: skip
    options.update(overrides)
    return options


async def test_compare_guidance_answers_one_grid_with_the_neighbour_changes_and_its_xyz_parameters(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        final = await wait_for_result(await fake.invoke("compare-guidance", grid()))

    assert [file.filename for file in final.files] == ["stepgrid-compare-42.png"]
    sentence = content(final) or ""
    assert sentence.startswith("For this prompt and seed: at 2 steps, ") and "; at 3 steps, " in sentence
    fields = embed_fields(final)
    assert (fields["Guidance"], fields["Steps"]) == ("1, 3, 7", "2, 3")
    image = image_of(final.files[0].data)
    assert image.width > 3 * 256 and image.height > 2 * 256  # 3 columns × 2 rows, labels around them
    parameters = png_parameters(final.files[0].data) or ""
    assert 'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "1, 3, 7", Y Type: Steps, Y Values: "2, 3"' in (parameters)
    (job,) = await all_jobs(database)
    assert (job.command, job.status, job.steps_run, job.images) == ("compare-guidance", "done", 15, 6)


async def test_a_guidance_grid_over_the_servers_limits_is_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await refusal(await fake.invoke("limits-set", {"max_grid_cells": 4}, user=fake.admin))
        assert await refusal(await fake.invoke("compare-guidance", grid())) == (
            "This server allows grids of at most 4 cells; you asked for 6 (3 guidance values × 2 step counts): "
            "give fewer of either."
        )
        await refusal(await fake.invoke("limits-set", {"compute_budget": 1}, user=fake.admin))
        assert "pixel-steps" in await refusal(await fake.invoke("compare-guidance", grid(steps="2")))
        assert queue.submitted == []
    assert await all_jobs(database) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            grid(guidance="0, 1, 5"),
            "Guidance 0 and 1 run without classifier-free guidance (1 or below turns it off), so their cells would "
            "be the same image; keep one of them.",
            id="two-values-without-cfg",
        ),
        pytest.param(grid(guidance="3, x"), "Could not read guidance values", id="unreadable"),
        pytest.param(grid(guidance="3"), "needs at least 2 guidance values; got 1.", id="one-value"),
        pytest.param(grid(guidance="3, 3.0"), "Guidance 3 is in the list twice", id="twice"),
        pytest.param(grid(guidance="3, 31"), "guidance must be 0 to 30; got 31.", id="out-of-range"),
        pytest.param(
            grid(guidance="1,2,3,4,5,6,7", steps="2,3"),
            "A comparison grid has at most 12 cells; 7 guidance values × 2 step counts would be 14: give fewer.",
            id="too-many-cells",
        ),
    ],
)
async def test_guidance_values_that_cant_make_a_grid_are_refused_in_one_line(
    fake: FakeDiscord, worker: LocalJobQueue, options: dict[str, Any], expected: str
) -> None:
    async with running_bot(fake, worker) as (_, queue):
        answer = await refusal(await fake.invoke("compare-guidance", options))
        assert expected in answer and "\n" not in answer
        assert queue.submitted == []


async def test_compare_steps_with_stop_early_answers_two_rows_from_one_job(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    options = {"prompt": "a red fox", "steps": "2,4", "size": "256", "scheduler": "Euler", "seed": 5,
               "stop_early": True}  # fmt: skip
    async with running_bot(fake, worker, database=database) as (_, queue):
        final = await wait_for_result(await fake.invoke("compare-steps", options))
        assert len(queue.submitted) == 1, "both rows come from one job"
    assert [file.filename for file in final.files] == ["stepgrid-compare-5.png"]
    sentence = content(final) or ""
    assert "Stopped early vs fewer steps: the 4-step run's x0, stopped at each step count, differs from an " in sentence
    image = image_of(final.files[0].data)
    assert image.width > 2 * 256 and image.height > 2 * 256
    assert (png_parameters(final.files[0].data) or "").endswith("Stop early: True")
    (job,) = await all_jobs(database)
    assert (job.command, job.status, job.steps_run, job.params["stop_early"]) == ("compare-steps", "done", 6, True)


async def test_stop_early_counts_its_decodes_against_the_compute_budget(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    # 256² × (2 + 4 steps) fits 400,000 pixel-steps; the stopped row's one decode more does not.
    options = {"prompt": "a fox", "steps": "2,4", "size": "256", "stop_early": True}
    async with running_bot(fake, worker, database=database) as (_, queue):
        await refusal(await fake.invoke("limits-set", {"compute_budget": 400_000}, user=fake.admin))
        answer = await refusal(await fake.invoke("compare-steps", options))
        assert answer.startswith("This request needs ") and "pixel-steps" in answer and "\n" not in answer
        assert queue.submitted == []


async def test_compare_steps_with_seeds_answers_a_row_per_seed_from_one_job_with_the_settle_points_in_words(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    options = {"prompt": "a red fox", "steps": "2,4", "size": "256", "scheduler": "Euler", "seed": 5, "seeds": 3}
    async with running_bot(fake, worker, database=database) as (_, queue):
        final = await wait_for_result(await fake.invoke("compare-steps", options))
        assert len(queue.submitted) == 1, "every seed's row comes from one job"
    sentence = content(final) or ""
    assert sentence.startswith("Over seeds 5–7, Euler ") and " seeds" in sentence and "\n" not in sentence
    assert embed_fields(final)["Seeds"] == "5, 6, 7"
    image = image_of(final.files[0].data)
    assert image.width > 2 * 256 and 3 * 256 < image.height < 4 * 256  # three rows, labels around them
    assert (png_parameters(final.files[0].data) or "").endswith('Y Type: Seed, Y Values: "5, 6, 7"')
    (job,) = await all_jobs(database)
    assert (job.command, job.status, job.steps_run, job.images, job.params["seeds"]) == (
        "compare-steps", "done", 18, 6, 3
    )  # fmt: skip


async def test_seeds_over_the_servers_cell_limit_or_with_stop_early_are_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    options = {"prompt": "a fox", "steps": "2,3,4", "size": "256", "seeds": 3}
    async with running_bot(fake, worker, database=database) as (_, queue):
        await refusal(await fake.invoke("limits-set", {"max_grid_cells": 6}, user=fake.admin))
        assert await refusal(await fake.invoke("compare-steps", options)) == (
            "This server allows grids of at most 6 cells; you asked for 9 (3 seeds × 3 step counts): "
            "give fewer of either."
        )
        assert await refusal(await fake.invoke("compare-steps", {**options, "steps": "2,3", "stop_early": True})) == (
            "Choose one of seeds and stop_early: each draws rows of its own."
        )
        assert queue.submitted == []
    assert await all_jobs(database) == []
