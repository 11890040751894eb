"""LoRAs end to end: the fake Discord, and ONE real worker serving the tiny SD model with two tiny
LoRAs (made with PEFT) and one of another family that fails to load by name.

Members get the model's LoRAs in autocomplete, may paste an A1111 prompt with `<lora:name:0.8>`, and
are refused (in one line, nothing queued) a LoRA the server doesn't allow or the model lacks."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from bot.config import Settings
from bot.storage.database import Database
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.requests import PlainRow
from tests.a1111 import parse_generation_parameters
from tests.e2e.helpers import (
    content,
    embed_fields,
    image_of,
    result_files,
    running_bot,
    wait_for_progress,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord, InteractionHandle, running_fake
from tests.inference.loras import make_lora
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> str:
    folder = tmp_path_factory.mktemp("loras")
    pixel = make_lora("tiny", folder, "pixel", seed=1, cache_dir=model_cache_dir)
    lightning = make_lora("tiny", folder, "lightning", seed=2, cache_dir=model_cache_dir)
    xl = make_lora("tiny-sdxl", folder, "xl", seed=3, cache_dir=model_cache_dir)
    return f"""
[[models]]
name = "sd"
source = "tiny"
steps = 6
  [[models.loras]]
  name = "pixel-art"
  source = "{pixel.kohya}"
  weight = 0.8
  triggers = ["pixel art"]
  [[models.loras]]
  name = "lightning"
  source = "{lightning.diffusers}"
  few_step = true
  [[models.loras]]
  name = "xl-style"
  source = "{xl.kohya}"
"""


def settings_for(registry: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": registry, "queue_max_length": 50, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig, registry: str) -> AsyncIterator[LocalJobQueue]:
    config = dataclasses.replace(tiny_config, model=registry, models=())
    async with started_queue(LocalJobQueue(config, max_length=50, hang_seconds=120)) as queue:
        yield queue


@pytest_asyncio.fixture(loop_scope="module")
async def database(tmp_path: Path, registry: str) -> AsyncIterator[Database]:
    async with Database(tmp_path / "stepgrid.sqlite3", settings_for(registry)) as database:
        yield database


async def ephemeral_text(handle: InteractionHandle) -> str:
    callback = await handle.wait_for_callback()
    assert callback.ok and callback.json["type"] == 4 and callback.ephemeral
    return content(callback) or ""


async def choice_labels(handle: InteractionHandle) -> dict[str, str]:
    callback = await handle.wait_for_callback()
    assert callback.ok and callback.json["type"] == 8, "an autocomplete answer"
    return {choice["value"]: choice["name"] for choice in callback.json["data"]["choices"]}


async def test_the_worker_serves_the_loras_that_fit_and_names_the_one_that_does_not(worker: LocalJobQueue) -> None:
    sd = worker.models["sd"]
    assert [lora.name for lora in sd.loras] == ["pixel-art", "lightning"]
    [failed] = sd.unavailable_loras
    assert failed.name == "xl-style" and "another model family" in failed.message


async def test_autocomplete_offers_the_models_loras_with_their_weight_and_few_step_settings(
    fake: FakeDiscord, worker: LocalJobQueue, registry: str
) -> None:
    async with running_bot(fake, worker, settings=settings_for(registry)):
        labels = await choice_labels(await fake.autocomplete("imagine", {"prompt": "a", "lora": ""}, "lora"))
        assert labels == {
            "pixel-art": "pixel-art · weight 0.8 · pixel art",
            "lightning": "lightning · weight 1 · few-step: 4 steps, Euler",
        }
        typed = await choice_labels(await fake.autocomplete("compare-steps", {"prompt": "a", "lora": "pix"}, "lora"))
        assert list(typed) == ["pixel-art"]


async def test_a_pasted_a1111_prompt_with_a_lora_tag_runs_it_and_the_png_says_so(
    fake: FakeDiscord, worker: LocalJobQueue, registry: str
) -> None:
    async with running_bot(fake, worker, settings=settings_for(registry)) as (_, queue):
        handle = await fake.invoke("imagine", {"prompt": "a castle <lora:Pixel-Art:0.6>", "seed": 4, "size": "256"})
        result = await wait_for_result(handle)
        [submitted] = queue.submitted
        assert submitted.request.prompt == "a castle" and submitted.request.loras == (("pixel-art", 0.6),)
        assert embed_fields(result)["LoRAs"] == "pixel-art 0.6"
        [png] = result_files(result)
        parsed = parse_generation_parameters(image_of(png.data).info["parameters"])
        assert parsed["Prompt"] == "a castle <lora:pixel-art:0.6>"
        assert parsed["Lora hashes"].startswith("pixel-art: ") and len(parsed["Lora hashes"]) == len("pixel-art: ") + 12


async def test_a_few_step_lora_brings_its_steps_scheduler_and_guidance(
    fake: FakeDiscord, worker: LocalJobQueue, registry: str
) -> None:
    async with running_bot(fake, worker, settings=settings_for(registry)) as (_, queue):
        handle = await fake.invoke("imagine", {"prompt": "a castle", "lora": "lightning", "size": "256"})
        fields = embed_fields(await wait_for_result(handle))
        assert (fields["Steps"], fields["Scheduler"], fields["Guidance"]) == ("4", "Euler", "0")
        assert queue.submitted[0].request.loras == (("lightning", 1.0),)


async def test_an_unknown_or_disallowed_lora_and_a_bad_weight_are_refused_in_one_line_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, registry: str, database: Database
) -> None:
    settings = settings_for(registry)
    async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
        unknown = await ephemeral_text(await fake.invoke("imagine", {"prompt": "a boat <lora:pixelart>"}))
        assert unknown == (
            "Unknown LoRA 'pixelart' for the model sd (close: pixel-art); its LoRAs: pixel-art, lightning."
        )
        failed = await ephemeral_text(await fake.invoke("imagine", {"prompt": "a boat", "lora": "xl-style"}))
        assert failed.startswith("The LoRA 'xl-style' didn't load on this worker: ") and "\n" not in failed
        weight = await ephemeral_text(await fake.invoke("imagine", {"prompt": "a boat <lora:pixel-art:5>"}))
        assert weight == "The weight of the LoRA 'pixel-art' must be -2 to 2; got 5."
        changed = await ephemeral_text(await fake.invoke("limits-set", {"allowed_loras": "lightning"}, user=fake.admin))
        assert "**allowed LoRAs**: lightning (server)" in changed
        refused = await fake.invoke("compare-steps", {"prompt": "a boat", "lora": "pixel-art", "lora_weight": 0.5})
        assert await ephemeral_text(refused) == "This server doesn't allow the LoRA pixel-art; it allows: lightning."
        offered = await choice_labels(await fake.autocomplete("imagine", {"prompt": "a", "lora": ""}, "lora"))
        assert list(offered) == ["lightning"]
        assert queue.submitted == []


async def test_lora_compare_draws_the_row_without_and_the_row_with_a_few_step_lora_in_one_job(
    fake: FakeDiscord, worker: LocalJobQueue, registry: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with running_bot(fake, worker, settings=settings_for(registry)) as (_, queue):
        refused = await fake.invoke("compare-steps", {"prompt": "a boat", "lora_compare": True})
        assert await ephemeral_text(refused) == (
            "lora_compare needs a LoRA: choose one with lora, or write <lora:name:0.8> in the prompt."
        )
        options = {"prompt": "a castle", "lora": "lightning", "lora_compare": True, "seed": 8, "size": "256"}
        result = await wait_for_result(await fake.invoke("compare-steps", options))
        [submitted] = queue.submitted  # one job: both rows
        request = submitted.request
        # The union of both ladders (the model's 5…50, the LoRA's 1…8), spread to fit 12 cells in two rows.
        assert request.steps == (1, 3, 5, 8, 20, 50) and len(request.lane_steps) == 12
        assert (request.scheduler, request.guidance) == ("Euler", 0.0)  # the LoRA row: its own defaults
        assert request.without_loras == PlainRow("Euler a", 7.5)  # the row without: the model's
        fields = embed_fields(result)
        assert fields["Scheduler"] == "Euler (without the LoRA: Euler a)"
        assert fields["Guidance"] == "0 (without the LoRA: 7.5)"
        summary = content(result) or ""
        assert summary.startswith("For this prompt and seed: with lightning it ") and "; without, it " in summary
        [png] = result_files(result)
        grid = image_of(png.data)
        (tmp_path_factory.mktemp("grid") / "lora-compare.png").write_bytes(png.data)  # to look at
        parsed = parse_generation_parameters(grid.info["parameters"])
        assert parsed["Prompt"] == "a castle <lora:lightning:1>" and parsed["Y Type"] == "LoRA"
        assert parsed["Lora hashes"].startswith("lightning: ") and len(parsed["Lora hashes"]) == len("lightning: ") + 12
        assert parsed["X Values"] == "1, 3, 5, 8, 20, 50"
        assert grid.width > 6 * 256 and 2 * 256 < grid.height < 3 * 256 + 200  # six columns, two rows


async def test_a_lora_grid_png_carries_lora_hashes(fake: FakeDiscord, worker: LocalJobQueue, registry: str) -> None:
    async with running_bot(fake, worker, settings=settings_for(registry)):
        options = {"prompt": "a castle", "lora": "pixel-art", "steps": "2,4", "seed": 1, "size": "256"}
        [png] = result_files(await wait_for_result(await fake.invoke("compare-steps", options)))
        parsed = parse_generation_parameters(image_of(png.data).info["parameters"])
        assert parsed["Prompt"] == "a castle <lora:pixel-art:0.8>"
        assert parsed["Lora hashes"].startswith("pixel-art: ") and len(parsed["Lora hashes"]) == len("pixel-art: ") + 12


async def test_a_lora_job_whose_worker_is_killed_mid_job_is_answered_by_the_restarted_worker_with_its_lora(
    worker: LocalJobQueue, registry: str
) -> None:
    """Last in this module: it kills the shared worker. The restarted worker loads the LoRAs again, and the
    re-sent job's image is the very image the job makes when nothing is killed."""
    options = {"prompt": "a castle", "lora": "pixel-art", "steps": 60, "seed": 11, "size": "256"}
    # A hang guard long enough for a restart (loading the model and its LoRAs again) on a busy CPU.
    async with running_fake(timeout=240.0) as fake, running_bot(fake, worker, settings=settings_for(registry)):
        [undisturbed] = result_files(await wait_for_result(await fake.invoke("imagine", options)))
        restarts = worker.restarts
        handle = await fake.invoke("imagine", options)
        await wait_for_progress(handle, "step ")
        pid = worker.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        [again] = result_files(await wait_for_result(handle))
    assert worker.restarts == restarts + 1 and worker.worker_pid != pid
    assert [lora.name for lora in worker.models["sd"].loras] == ["pixel-art", "lightning"]
    assert np.array_equal(np.asarray(image_of(again.data)), np.asarray(image_of(undisturbed.data)))
    parsed = parse_generation_parameters(image_of(again.data).info["parameters"])
    assert parsed["Prompt"] == "a castle <lora:pixel-art:0.8>" and parsed["Lora hashes"].startswith("pixel-art: ")
