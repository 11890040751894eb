"""Image safety end to end: the real bot on the fake Discord, a real worker whose image checker (a tiny
rigged classifier loaded from its folder) flags every picture. In an ordinary channel no flagged picture is
ever uploaded (every REST body the fake recorded is checked, previews included); in an age-restricted
channel, or a thread under one, it is (as a spoiler when the server asks); a checker that can't load stops
every picture. Behind Redis the agent's worker checks before a result leaves the GPU host, and its verdicts
reach the bot on the wire; a button's job obeys its channel as it is when pressed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
import sqlalchemy as sa

from bot.storage.database import Database
from bot.storage.job_store import MemoryJobStore
from bot.storage.models import JobRow
from inference.protocol import JobEvent, JobProgress, JobResult, WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import (
    SharedQueue,
    button,
    content,
    custom_ids,
    embed_fields,
    image_of,
    result_files,
    running_bot,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord, InteractionHandle
from tests.inference.redis_backends import redis_queue, started_agent
from tests.redis_server import RedisServer, fresh_keys
from tests.safety_checkers import save_tiny_classifier
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

WITHHELD = "withheld: the image checker flagged"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalJobQueue]:
    """One real worker for the module: the tiny model, and a checker that flags every picture."""
    checker = save_tiny_classifier(tmp_path_factory.mktemp("checker") / "flags-all", flags=True)
    config = WorkerConfig(model="tiny", cache_dir=tiny_config.cache_dir, safety_checker=str(checker))
    async with started_queue(LocalJobQueue(config, max_length=20, hang_seconds=120)) as queue:
        yield queue


def imagine_options(**overrides: Any) -> dict[str, Any]:
    # Enough steps that the worker makes a preview before the image is done (its first progress waits for one).
    options: dict[str, Any] = {"prompt": "a lighthouse at dusk", "steps": 8, "size": "256", "scheduler": "Euler"}
    options.update(overrides)
    return options


async def final_answer(handle: InteractionHandle) -> str:
    """The content of the job's last message once it has its embed with the parameters (the result)."""
    request = await handle.wait_for(lambda r: r.ok and any("fields" in e for e in r.data.get("embeds") or []))
    return content(request) or ""


def uploaded(fake: FakeDiscord) -> list[str]:
    """The name of every file in every REST body the bot sent, to any route."""
    return [file.filename for request in fake.requests for file in request.files]


async def test_a_flagged_image_in_an_ordinary_channel_is_never_uploaded_and_is_counted(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (bot, _):
        handle = await fake.invoke("imagine", imagine_options(count=2))
        text = await final_answer(handle)
        usage = await fake.invoke("usage-server", user=fake.admin)
        usage_fields = embed_fields(await usage.wait_for(lambda r: r.ok and bool(r.data.get("embeds"))))
        metrics = bot.metrics.exposition().decode()
    assert "2 images withheld: the image checker flagged them" in text
    assert [f for f in uploaded(fake) if f != "usage-chart.png"] == [], "no flagged picture or preview left the bot"
    async with database.sessions() as session:
        [job] = (await session.scalars(sa.select(JobRow))).all()
    assert job.status == "done" and job.images_withheld == 2 and job.steps_run == 16, "it counts as it ran"
    assert usage_fields["Withheld"].startswith("2 flagged")
    assert "stepgrid_images_withheld_total 2.0" in metrics


async def test_a_flagged_grid_in_an_ordinary_channel_has_neutral_tiles_in_its_cells(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker) as (bot, _):
        handle = await fake.invoke("compare-steps", {"prompt": "a fox", "steps": "2,4", "size": "256"})
        final = await wait_for_result(handle)
        job_id = button(handle.original_message, "reroll").rsplit(":", 1)[1]
        store = bot.jobs.store
    assert "2 grid cells withheld" in (content(final) or "")
    assert not [c for c in custom_ids(handle.original_message) if c.startswith("stepgrid:cells:")], "no cell menus"
    assert isinstance(store, MemoryJobStore) and not [key for key in store.cells if key[0] == job_id], "none kept"
    [grid] = result_files(final)
    assert [f for f in uploaded(fake) if f != grid.filename] == [], "no preview left the bot"
    pixels = image_of(grid.data).convert("RGB")
    assert pixels.getpixel((20, 60)) == (64, 66, 71), "the cell is the neutral tile, not the picture"


async def test_in_an_age_restricted_channel_a_flagged_image_is_posted(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    adult = fake.guild.text_channel("adult", nsfw=True)
    async with running_bot(fake, worker):
        handle = await fake.invoke("imagine", imagine_options(seed=7), channel=adult)
        final = await wait_for_result(handle)
    assert [f.filename for f in result_files(final)] == ["stepgrid-7.png"]
    assert WITHHELD not in (content(final) or "")


async def test_in_a_thread_under_an_age_restricted_channel_a_flagged_image_is_posted(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    adult = fake.guild.text_channel("adult", nsfw=True)
    thread = fake.guild.thread("renders", adult)
    plain_thread = fake.guild.thread("renders", fake.guild.channels[0])
    async with running_bot(fake, worker):
        handle = await fake.invoke("imagine", imagine_options(seed=8), channel=thread)
        final = await wait_for_result(handle)
        plain = await fake.invoke("imagine", imagine_options(seed=9), channel=plain_thread)
        plain_text = await final_answer(plain)
    assert [f.filename for f in result_files(final)] == ["stepgrid-8.png"]
    assert "1 image withheld" in plain_text and not [r for r in plain.requests if r.files]


async def test_a_server_that_asks_for_spoilers_gets_flagged_images_as_spoilers(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    adult = fake.guild.text_channel("adult", nsfw=True)
    async with running_bot(fake, worker, database=database):
        change = await fake.invoke("limits-set", {"flagged_images": "age-restricted-spoiler"}, user=fake.admin)
        assert "in age-restricted channels, as spoilers" in (content(await change.wait_for_callback()) or "")
        handle = await fake.invoke("imagine", imagine_options(seed=5), channel=adult)
        final = await handle.wait_for(lambda r: r.ok and any("stepgrid-" in f.filename for f in r.files))
        ordinary = await fake.invoke("imagine", imagine_options(seed=6))
        await final_answer(ordinary)
    assert [f.filename for f in final.files] == ["SPOILER_stepgrid-5.png"]
    assert {f for r in handle.requests for f in (x.filename for x in r.files)} <= {
        "SPOILER_stepgrid-5.png",
        "SPOILER_preview.png",
    }, "its previews went as spoilers too"
    assert not [r for r in ordinary.requests if r.files], "spoilers are for age-restricted channels only"


async def test_vary_under_a_spoilered_result_starts_from_the_spoilered_image(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    adult = fake.guild.text_channel("adult-vary", nsfw=True)
    async with running_bot(fake, worker, database=database) as (_, queue):
        change = await fake.invoke("limits-set", {"flagged_images": "age-restricted-spoiler"}, user=fake.admin)
        await change.wait_for_callback()
        handle = await fake.invoke("imagine", imagine_options(seed=8, steps=4), channel=adult)
        final = await handle.wait_for(lambda r: r.ok and any("stepgrid-" in f.filename for f in r.files))
        message = handle.original_message
        vary = await fake.click(message, button(message, "vary"))
        await vary.wait_for(lambda r: r.ok and any("stepgrid-" in f.filename for f in r.files))
        _, varied = (s.request for s in queue.submitted)
    [posted] = [f for f in final.files if f.filename == "SPOILER_stepgrid-8.png"]
    assert image_of(varied.image).tobytes() == image_of(posted.data).tobytes()


async def test_allow_everywhere_is_refused_unless_the_operator_allows_it(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        change = await fake.invoke("limits-set", {"flagged_images": "everywhere"}, user=fake.admin)
        answer = content(await change.wait_for_callback()) or ""
    assert "The operator doesn't allow flagged pictures outside age-restricted channels" in answer


async def test_a_checker_that_fails_to_load_stops_every_picture(
    fake: FakeDiscord, tiny_config: WorkerConfig, tmp_path: Path
) -> None:
    config = WorkerConfig(model="tiny", cache_dir=tiny_config.cache_dir, safety_checker=str(tmp_path / "missing"))
    broken = LocalJobQueue(config, max_length=5, hang_seconds=120)
    await broken.start()
    try:
        with pytest.raises(Exception, match="image safety checker"):
            await broken.wait_ready()
        async with running_bot(fake, broken):
            handle = await fake.invoke("imagine", imagine_options())
            answer = content(await handle.wait_for_callback()) or ""
    finally:
        await broken.close()
    assert "the image safety checker failed to load, and no picture is posted unchecked" in answer
    assert uploaded(fake) == []


class SeenQueue(SharedQueue):
    """A bot's view of a queue that keeps every event the bot received, as it received them."""

    def __init__(self, inner: LocalJobQueue) -> None:
        super().__init__(inner)
        self.seen: list[JobEvent] = []

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async for event in super().events(job_id):
            self.seen.append(event)
            yield event


async def test_behind_redis_the_agent_checks_and_a_flagged_result_never_leaves_the_bot(
    fake: FakeDiscord, tiny_config: WorkerConfig, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The bot's side has no checker at all: what it withholds, it knows from the verdicts on the wire."""
    checker = save_tiny_classifier(tmp_path / "flags-all", flags=True)
    agent_config = WorkerConfig(model="tiny", cache_dir=tiny_config.cache_dir, safety_checker=str(checker))
    bot_config = WorkerConfig(model="tiny", cache_dir=tiny_config.cache_dir, safety_checker="none")
    keys = fresh_keys()
    async with started_agent(redis_server.url, agent_config, keys, hang_seconds=120):
        queue = redis_queue(bot_config, redis_server.url, keys)
        await queue.start()
        try:
            await queue.wait_ready()
            seen = SeenQueue(cast(LocalJobQueue, queue))  # duck-typed: SharedQueue uses the JobQueue contract only
            async with running_bot(fake, cast(LocalJobQueue, queue), queue=seen):
                handle = await fake.invoke("imagine", imagine_options(count=2))
                text = await final_answer(handle)
        finally:
            await queue.close()
    assert "2 images withheld: the image checker flagged them" in text
    assert uploaded(fake) == [], "no flagged picture or preview left the bot"
    [result] = [event for event in seen.seen if isinstance(event, JobResult)]
    verdicts = [image.verdict for image in result.images]
    assert all(v is not None and v.flagged and v.checker == str(checker) and v.score > 0.99 for v in verdicts)
    previews = [e for e in seen.seen if isinstance(e, JobProgress) and e.preview_png is not None]
    assert previews and all(e.preview_verdict is not None and e.preview_verdict.flagged for e in previews)


async def test_a_button_obeys_its_channel_as_it_is_when_pressed_not_as_it_was_for_the_first_job(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    """A result posted in an age-restricted channel; then an admin unmarks the channel. Vary and Compare steps
    pressed on that result now start jobs in an ordinary channel: their flagged pictures are withheld."""
    channel = fake.guild.text_channel("was-adult", nsfw=True)
    async with running_bot(fake, worker):
        handle = await fake.invoke("imagine", imagine_options(seed=21), channel=channel)
        final = await wait_for_result(handle)
        assert [f.filename for f in result_files(final)] == ["stepgrid-21.png"], "posted while age-restricted"
        message = handle.original_message
        channel.nsfw = False
        await fake.dispatch("CHANNEL_UPDATE", channel.payload())  # Discord tells the bot, as it does
        vary = await fake.click(message, button(message, "vary"))
        vary_text = await final_answer(vary)
        compare = await fake.click(message, button(message, "compare"))
        grid = await wait_for_result(compare)
    assert "1 image withheld: the image checker flagged it" in vary_text
    assert not [f for request in vary.requests for f in request.files], "no picture or preview of Vary's job"
    assert "grid cells withheld" in (content(grid) or "")
    [grid_file] = result_files(grid)
    assert [f.filename for r in compare.requests for f in r.files if f.filename != grid_file.filename] == []
    assert image_of(grid_file.data).convert("RGB").getpixel((20, 60)) == (64, 66, 71), "the neutral tile"
