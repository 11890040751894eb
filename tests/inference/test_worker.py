"""One real worker serving two families at once (tiny SD and tiny FLUX) from a registry where a
third model fails to load: jobs for both interleave, each answer equals the job run alone, and
requests a model can't run are refused with one clear line before they reach the worker."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from inference.protocol import JobEvent, JobFailed, JobResult, WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.registry import ModelSpec
from inference.requests import CompareStepsRequest, GenerateRequest, InvalidRequest, Request
from tests.workers import started_queue

pytestmark = pytest.mark.slow

SIZE = {"width": 256, "height": 256}


@dataclass
class Served:
    queue: LocalJobQueue
    early: dict[str, str]  # submitted before the models were known: reason -> job id


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    missing = tmp_path_factory.mktemp("registry") / "no-such-model"
    config = WorkerConfig(
        models=(
            ModelSpec(name="sd", source="tiny"),
            ModelSpec(name="flux", source="tiny-flux", max_steps=8),
            ModelSpec(name="gone", source=str(missing)),
        ),
        cache_dir=str(model_cache_dir),
        max_batch_lanes=8,
    )
    queue = LocalJobQueue(config, hang_seconds=60)
    early = {
        "unavailable": queue.submit(GenerateRequest("fox", model="gone", **SIZE), user_id="u"),
        "scheduler": queue.submit(GenerateRequest("fox", scheduler="DDIM", model="flux", **SIZE), user_id="u"),
    }
    async with started_queue(queue):
        yield Served(queue, early)


async def run(queue: LocalJobQueue, request: Request, order: list[tuple[str, str]] | None = None) -> JobResult:
    job_id = queue.submit(request, user_id=request.model or "default")
    async for event in queue.events(job_id):
        if order is not None:
            order.append((request.model, type(event).__name__))
        if isinstance(event, JobResult | JobFailed):
            assert isinstance(event, JobResult), event
            return event
    raise AssertionError("no answer")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_worker_reports_its_models_and_the_one_that_failed(served: Served) -> None:
    queue = served.queue
    assert list(queue.models) == ["sd", "flux"]
    assert (queue.models["sd"].family, queue.models["flux"].family) == ("sd", "flux")
    assert queue.models["flux"].max_steps == 8 and queue.models["flux"].compare_steps == (1, 2, 3, 4, 6, 8)
    assert list(queue.unavailable_models) == ["gone"]
    assert "Could not load model 'gone' from" in queue.unavailable_models["gone"].message
    assert queue.worker_info is not None and queue.worker_info.model == "sd" and queue.unavailable is None


@pytest.mark.asyncio(loop_scope="module")
async def test_jobs_for_two_families_interleave_and_each_equals_its_run_alone(served: Served) -> None:
    queue = served.queue
    sd = GenerateRequest("a castle", steps=8, scheduler="Euler a", seed=3, model="sd", **SIZE)
    flux = CompareStepsRequest("a castle", steps=(2, 4), scheduler="Euler", seed=3, guidance=0.0, model="flux", **SIZE)
    sd_alone = await run(queue, sd)
    flux_alone = await run(queue, flux)

    order: list[tuple[str, str]] = []
    sd_mixed, flux_mixed = await asyncio.gather(run(queue, sd, order), run(queue, flux, order))
    first_answer = next(i for i, (_, kind) in enumerate(order) if kind == "JobResult")
    progressed = {model for model, kind in order[:first_answer] if kind == "JobProgress"}
    assert progressed == {"sd", "flux"}, "both models denoised before either job finished"

    assert (sd_mixed.model, flux_mixed.model) == ("sd", "flux")
    assert [image.steps for image in flux_mixed.images] == [2, 4]
    for mixed, alone in ((sd_mixed, sd_alone), (flux_mixed, flux_alone)):
        for image, reference in zip(mixed.images, alone.images, strict=True):
            assert np.abs(pixels(image.png) - pixels(reference.png)).max() <= 1


@pytest.mark.asyncio(loop_scope="module")
async def test_no_model_named_means_the_default_one(served: Served) -> None:
    result = await run(served.queue, GenerateRequest("fox", steps=2, **SIZE))
    assert result.model == "sd" and result.is_test_model


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerateRequest("fox", model="nope"), "Unknown model 'nope'; choose one of: sd, flux."),
        (GenerateRequest("fox", model="gone"), "The model 'gone' is unavailable: Could not load model 'gone' from"),
        (GenerateRequest("fox", scheduler="DDIM", model="flux"),
         "The model flux can't run the scheduler 'DDIM'; choose one of: Euler, Heun, DPM++ 2M, UniPC."),
        (GenerateRequest("fox", scheduler="Euler", width=264, model="flux"),
         "width must be a multiple of 16 for the model flux; got 264."),
        (CompareStepsRequest("fox", steps=(4, 9), scheduler="Euler", guidance=0.0, model="flux"),
         "steps must be at most 8 for the model flux; got 9."),
    ],
)  # fmt: skip
async def test_a_request_its_model_cant_run_is_refused_with_one_clear_line(
    served: Served, request_: Request, message: str
) -> None:
    with pytest.raises(InvalidRequest) as error:
        served.queue.submit(request_, user_id="u")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.asyncio(loop_scope="module")
async def test_jobs_queued_before_the_models_were_known_are_answered_once_they_are(served: Served) -> None:
    answers: dict[str, JobEvent] = {}
    for reason, job_id in served.early.items():
        answers[reason] = [event async for event in served.queue.events(job_id)][-1]
    assert isinstance(answers["unavailable"], JobFailed) and "is unavailable" in answers["unavailable"].message
    assert (
        isinstance(answers["scheduler"], JobFailed) and "can't run the scheduler 'DDIM'" in answers["scheduler"].message
    )


def test_an_unknown_model_is_refused_before_the_worker_has_started(tiny_config: WorkerConfig) -> None:
    queue = LocalJobQueue(tiny_config)
    with pytest.raises(InvalidRequest, match=r"Unknown model .tiny-flux.; choose one of: tiny\."):
        queue.submit(GenerateRequest("fox", model="tiny-flux"), user_id="u")
