"""Vary and Upscale of one image of several (V1–V4, U1–U4) and of one grid cell (the cell menus), end to end:
the real bot on the fake Discord, the real worker; each starts from that very image with its own settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.storage.database import Database
from bot.storage.inputs import sha256_of
from bot.storage.job_store import MemoryJobStore
from inference.parameters import PNG_KEY
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.requests import GenerateRequest
from tests.e2e.helpers import (
    button,
    custom_ids,
    e2e_settings,
    embed_fields,
    image_of,
    result_files,
    running_bot,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    async with started_queue(LocalJobQueue(tiny_config, max_length=20, hang_seconds=120)) as queue:
        yield queue


async def test_v2_under_two_images_varies_the_second_image(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    options = {"prompt": "a lighthouse", "steps": 6, "size": "256", "scheduler": "Euler", "seed": 20, "count": 2}
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke("imagine", options)
        final = await wait_for_result(handle)
        message = handle.original_message
        posted = {f.filename: f.data for f in result_files(final)}
        assert set(posted) == {"stepgrid-20.png", "stepgrid-21.png"}
        job_id = button(message, "reroll").rsplit(":", 1)[1]
        assert f"stepgrid:upscale:{job_id}:2" in custom_ids(message)
        click = await fake.click(message, f"stepgrid:vary:{job_id}:2")
        varied = await wait_for_result(click)
        first, vary = (s.request for s in queue.submitted)
    assert isinstance(first, GenerateRequest) and isinstance(vary, GenerateRequest)
    assert vary.count == 1 and vary.strength == 0.35 and vary.seed not in (20, 21)
    assert (vary.steps, vary.scheduler, vary.width, vary.height) == (6, "Euler", 256, 256)
    second = image_of(posted["stepgrid-21.png"]).tobytes()
    assert image_of(vary.image).tobytes() == second, "V2 starts from the second image"
    assert image_of(vary.image).tobytes() != image_of(posted["stepgrid-20.png"]).tobytes()
    assert embed_fields(varied)["Steps"] == "6 steps · strength 0.35 · 2 ran"


async def test_a_grid_cells_upscale_after_a_restart_starts_from_that_cell_at_its_steps(
    fake: FakeDiscord, worker: LocalJobQueue, tmp_path: Path
) -> None:
    settings = e2e_settings()
    path = tmp_path / "stepgrid.sqlite3"
    options = {"prompt": "a red fox", "steps": "4, 8", "size": "256", "scheduler": "Euler", "seed": 3}
    database = Database(path, settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database):
            handle = await fake.invoke("compare-steps", options)
            grid = await wait_for_result(handle)
            message = handle.original_message
            job_id = button(message, "reroll").rsplit(":", 1)[1]
    finally:
        await database.close()
    [grid_png] = result_files(grid)
    assert image_of(grid_png.data).size != (256, 256), "the grid is posted framed; its cells are kept apart"

    # A new process, the same database: the grid's menus still work, from the cells kept beside it.
    database = Database(path, settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
            pick = await fake.choose(int(message["id"]), f"stepgrid:cells:upscale:{job_id}", "2")
            upscaled = await wait_for_result(pick)
            [submitted] = queue.submitted
            row = await database.ledger.get_job(submitted.job_id or "")
        kept = database.cells.load(job_id, 1)
    finally:
        await database.close()
    upscale = submitted.request
    assert isinstance(upscale, GenerateRequest) and upscale.upscale_only and upscale.hires is not None
    assert upscale.hires.steps == 8 and upscale.steps == 8 and upscale.scheduler == "Euler" and upscale.seed == 3
    assert kept is not None and "Steps: 8," in image_of(kept).text[PNG_KEY], "the 8-step cell, as the worker made it"
    assert image_of(upscale.image).size == (256, 256)
    assert image_of(upscale.image).tobytes() == image_of(kept).tobytes(), "Upscale starts from the unframed cell"
    assert row is not None and row.parent_job_id == job_id and row.input_sha256 == sha256_of(upscale.image)
    [big] = result_files(upscaled)
    assert image_of(big.data).size == (512, 512)


async def test_a_cell_that_is_not_kept_is_one_line_and_nothing_runs(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker) as (bot, queue):
        handle = await fake.invoke("compare-steps", {"prompt": "a fox", "steps": "2, 4", "size": "256", "seed": 1})
        await wait_for_result(handle)
        message = handle.original_message
        job_id = button(message, "reroll").rsplit(":", 1)[1]
        store = bot.jobs.store
        assert isinstance(store, MemoryJobStore)
        store.cells.clear()  # as if cleared past the cap
        pick = await fake.choose(message, f"stepgrid:cells:vary:{job_id}", "1")
        answer = await pick.wait_for_callback()
        assert answer.ephemeral
        assert answer.json["data"]["content"] == "That cell's image is not kept any more; run the grid again."
        assert len(queue.submitted) == 1
