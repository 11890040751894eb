"""Several models in one bot, end to end: the fake Discord, and ONE real worker serving two families.

The worker loads an SD model (the tiny one, with registry defaults kept small for the CPU) and a
FLUX.1-schnell-like one (tiny-flux, with its family's own defaults), and fails to load a third whose
folder does not exist. Each test starts its own bot and fake Discord; waits are on what the fake
records, never on sleeps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.config import Settings
from bot.storage.database import Database
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import (
    button,
    content,
    embed_fields,
    image_of,
    result_files,
    running_bot,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord, InteractionHandle, RecordedRequest
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# STEPGRID_MODEL as registry TOML text: the first model is the default.
REGISTRY = """
[[models]]
name = "sd"
source = "tiny"
steps = 6
compare_steps = [2, 4, 6]

[[models]]
name = "flux"
source = "tiny-flux"

[[models]]
name = "gone"
source = "./no/such/model-folder"
"""


def models_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": REGISTRY, "queue_max_length": 50, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    """One real worker with both families for the whole module (the third model fails to load)."""
    config = dataclasses.replace(tiny_config, model=REGISTRY, models=())
    async with started_queue(LocalJobQueue(config, max_length=50, hang_seconds=120)) as queue:
        yield queue


@pytest_asyncio.fixture(loop_scope="module")
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "stepgrid.sqlite3", models_settings()) as database:
        yield database


async def ephemeral_text(handle: InteractionHandle) -> str:
    """The interaction's answer, which must be one ephemeral message (not a defer)."""
    callback = await handle.wait_for_callback()
    assert callback.ok and callback.json["type"] == 4 and callback.ephemeral
    return content(callback) or ""


def footer(request: RecordedRequest) -> str:
    embeds = request.data.get("embeds") or []
    return str(embeds[0].get("footer", {}).get("text", "")) if embeds else ""


async def choices(handle: InteractionHandle) -> list[str]:
    callback = await handle.wait_for_callback()
    assert callback.ok and callback.json["type"] == 8, "an autocomplete answer"
    return [choice["value"] for choice in callback.json["data"]["choices"]]


# --- tests ---------------------------------------------------------------------------------------------


async def test_the_worker_serves_two_families_and_names_the_one_that_failed(worker: LocalJobQueue) -> None:
    assert {name: model.family for name, model in worker.models.items()} == {"sd": "sd", "flux": "flux"}
    assert "gone" in worker.unavailable_models


async def test_imagine_with_each_family_uses_that_models_defaults_and_names_it(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker, settings=models_settings()) as (_, queue):
        flux = await fake.invoke("imagine", {"prompt": "a lighthouse", "model": "flux", "seed": 7})
        sd = await fake.invoke("imagine", {"prompt": "a lighthouse", "seed": 7})  # the default model

        flux_result, sd_result = await wait_for_result(flux), await wait_for_result(sd)
        flux_fields, sd_fields = embed_fields(flux_result), embed_fields(sd_result)
        # tiny-flux is schnell-like: its family's 4 steps, Euler, no guidance; native size within the limits.
        assert (flux_fields["Model"], flux_fields["Steps"], flux_fields["Scheduler"]) == ("flux", "4", "Euler")
        assert flux_fields["Guidance"] == "0"
        # The SD model: its registry defaults (6 steps) and its family's scheduler.
        assert (sd_fields["Model"], sd_fields["Steps"], sd_fields["Scheduler"]) == ("sd", "6", "Euler a")
        assert re.fullmatch(r"job \w+ · flux · random-weight test model", footer(flux_result))
        assert re.fullmatch(r"job \w+ · sd · random-weight test model", footer(sd_result))
        [png] = result_files(flux_result)
        assert image_of(png.data).size == (256, 256)
        assert [s.request.model for s in queue.submitted] == ["flux", "sd"]


async def test_compare_steps_with_each_family_uses_that_models_ladder(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker, settings=models_settings()) as (_, queue):
        flux = await fake.invoke("compare-steps", {"prompt": "a fox", "model": "flux", "seed": 3})
        sd = await fake.invoke("compare-steps", {"prompt": "a fox", "model": "sd", "seed": 3})

        flux_fields, sd_fields = embed_fields(await wait_for_result(flux)), embed_fields(await wait_for_result(sd))
        assert (flux_fields["Model"], flux_fields["Steps"]) == ("flux", "1, 2, 3, 4, 6, 8")  # schnell's ladder
        assert (sd_fields["Model"], sd_fields["Steps"]) == ("sd", "2, 4, 6")  # the operator's, in the registry
        assert {s.request.model for s in queue.submitted} == {"flux", "sd"}


async def test_reroll_keeps_the_model(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker, settings=models_settings()) as (_, queue):
        first = await fake.invoke("imagine", {"prompt": "a boat", "model": "flux", "seed": 11, "size": "256"})
        await wait_for_result(first)
        message = first.original_message
        reroll = await fake.click(message, button(message, "reroll"))

        fields = embed_fields(await wait_for_result(reroll))
        assert fields["Model"] == "flux" and fields["Seed"] != "11"
        assert [s.request.model for s in queue.submitted] == ["flux", "flux"]


async def test_a_model_the_server_does_not_allow_is_refused_listing_the_allowed_ones(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, settings=models_settings(), database=database) as (_, queue):
        changed = await ephemeral_text(await fake.invoke("limits-set", {"allowed_models": "sd"}, user=fake.admin))
        assert "**allowed models**: sd (server)" in changed

        refused = await ephemeral_text(await fake.invoke("imagine", {"prompt": "a boat", "model": "flux"}))
        assert refused == "This server doesn't allow the model flux; it allows: sd."
        refused_grid = await ephemeral_text(await fake.invoke("compare-steps", {"prompt": "a boat", "model": "flux"}))
        assert refused_grid == refused
        assert queue.submitted == []
        assert await choices(await fake.autocomplete("imagine", {"prompt": "a", "model": ""}, "model")) == ["sd"]


async def test_a_model_that_failed_to_load_is_refused_and_the_others_keep_working(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker, settings=models_settings()) as (_, queue):
        refused = await ephemeral_text(await fake.invoke("imagine", {"prompt": "a boat", "model": "gone"}))
        assert refused.startswith("The model gone is unavailable: ") and "\n" not in refused
        scheduler = await fake.invoke("imagine", {"prompt": "a boat", "model": "flux", "scheduler": "DDIM"})
        assert (await ephemeral_text(scheduler)).startswith("The model flux can't run the scheduler 'DDIM'")
        assert queue.submitted == []
        works = await fake.invoke("imagine", {"prompt": "a boat", "model": "flux", "size": "256"})
        assert embed_fields(await wait_for_result(works))["Model"] == "flux"


async def test_autocomplete_offers_the_models_and_the_chosen_models_schedulers(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker, settings=models_settings()):
        models = await fake.autocomplete("imagine", {"prompt": "a", "model": ""}, "model")
        callback = await models.wait_for_callback()
        names = {c["value"]: c["name"] for c in callback.json["data"]["choices"]}
        assert names == {"sd": "sd · sd · 6 steps (default)", "flux": "flux · flux · 4 steps"}
        flux = await fake.autocomplete("compare-steps", {"prompt": "a", "model": "flux", "scheduler": ""}, "scheduler")
        flux_schedulers = await choices(flux)
        sd = await fake.autocomplete("imagine", {"prompt": "a", "scheduler": ""}, "scheduler")
        sd_schedulers = await choices(sd)
        assert flux_schedulers[0] == "Euler" and "DDIM" not in flux_schedulers
        assert sd_schedulers[0] == "Euler a" and "DDIM" in sd_schedulers


async def test_what_a_model_would_ignore_is_refused_in_one_line_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker, settings=models_settings()) as (_, queue):
        guidance = await fake.invoke("imagine", {"prompt": "a boat", "model": "flux", "guidance": 7.0})
        assert await ephemeral_text(guidance) == "The model flux (flux) ignores guidance; leave it out (got 7)."
        negative = await fake.invoke("compare-steps", {"prompt": "a boat", "model": "flux", "negative_prompt": "fog"})
        assert await ephemeral_text(negative) == "The model flux (flux) doesn't use a negative prompt; leave it out."
        no_cfg = await fake.invoke("imagine", {"prompt": "a boat", "guidance": 1.0, "negative_prompt": "fog"})
        assert await ephemeral_text(no_cfg) == (
            "A negative prompt takes effect only with guidance above 1; got guidance 1 with the model sd: "
            "leave the negative prompt out or raise guidance."
        )
        assert queue.submitted == []
