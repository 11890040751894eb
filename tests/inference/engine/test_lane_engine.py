"""The lane engine on the real tiny SD pipeline (random weights, fp32 CPU): batching must not change
any lane's result, for every scheduler, and each lane is a true N-step run. Other families' lanes
are tested in tests/inference/families/, several models in one engine at the end of this file."""

from __future__ import annotations

import dataclasses
import io
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bot.pictures.grids import grid_rows
from bot.pictures.render import default_caption
from inference.engine.lane_engine import LaneEngine, UnknownModel
from inference.models.loading import LoadedModel
from inference.protocol import (
    SCHEDULER_NAMES,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    JobEvent,
    JobFailed,
    JobProgress,
    JobResult,
    ProgressBatch,
)
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256
STEPS = 6


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def _run_alone(model: LoadedModel, request: GenerateRequest) -> torch.Tensor:
    return run_alone(model, request)


_relative_error = relative_error


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_a_lane_in_a_batch_equals_the_same_lane_alone(tiny: LoadedModel, scheduler: str) -> None:
    request = GenerateRequest("a red fox in snow", steps=STEPS, scheduler=scheduler, seed=1234,
                              guidance=6.0, width=SIZE, height=SIZE, negative_prompt="blurry")  # fmt: skip
    alone = _run_alone(tiny, request)

    engine = RecordingEngine(tiny)
    engine.add_job("neighbour-a", GenerateRequest("a castle", steps=STEPS + 3, scheduler="Euler a", seed=9,
                                                  width=SIZE, height=SIZE, count=2))  # fmt: skip
    engine.add_job("subject", request)
    engine.add_job("neighbour-b", CompareStepsRequest("a boat", steps=(2, 4, STEPS), scheduler="DPM++ 2M",
                                                      seed=5, guidance=3.0, width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()

    assert max(engine.batch_sizes) >= 4, "the subject must have shared UNet calls with other lanes"
    assert _relative_error(engine.final_latents[("subject", 0)], alone) <= 1e-4
    image = Image.open(io.BytesIO(engine.result("subject").images[0].png))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # a real decoded image, not a blank


def test_same_seed_gives_the_same_image_and_another_seed_does_not(tiny: LoadedModel) -> None:
    request = GenerateRequest("a lighthouse", steps=4, scheduler="Euler a", seed=42, width=SIZE, height=SIZE)
    first = _run_alone(tiny, request)
    again = _run_alone(tiny, request)
    other = _run_alone(tiny, GenerateRequest("a lighthouse", steps=4, scheduler="Euler a", seed=43,
                                             width=SIZE, height=SIZE))  # fmt: skip
    assert torch.equal(first, again)
    assert _relative_error(other, first) > 0.1


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "Heun"])
def test_a_lane_matches_the_plain_diffusers_pipeline_call(tiny: LoadedModel, scheduler: str) -> None:
    """Each lane is exactly what StableDiffusionPipeline.__call__ computes for that scheduler."""
    request = GenerateRequest("a red fox", steps=5, scheduler=scheduler, seed=77, guidance=7.5,
                              width=SIZE, height=SIZE)  # fmt: skip
    ours = _run_alone(tiny, request)
    pipe = tiny.pipe
    plain = type(pipe)(**{**pipe.components, "scheduler": make_scheduler(pipe.scheduler.config, scheduler, 77)})
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        "a red fox", num_inference_steps=5, guidance_scale=7.5, height=SIZE, width=SIZE,
        generator=torch.Generator("cpu").manual_seed(77), output_type="latent",
    ).images  # fmt: skip
    assert _relative_error(ours, theirs) <= 1e-4
    assert pipe.scheduler.__class__.__name__ == "PNDMScheduler", "the pipeline's own scheduler is never mutated"


def test_compare_steps_lanes_are_honest_n_step_runs_that_finish_together(tiny: LoadedModel) -> None:
    steps = (2, 5, 8)
    engine = RecordingEngine(tiny)
    engine.add_job("grid", CompareStepsRequest("a boat", steps=steps, scheduler="DPM++ 2M", seed=3,
                                               width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()
    assert engine.batch_sizes == [1, 1, 1, 2, 2, 2, 3, 3]  # right-aligned: the 2-step lane joins last
    result = engine.result("grid")
    assert [image.steps for image in result.images] == list(steps)
    for index, n in enumerate(steps):
        alone = _run_alone(tiny, GenerateRequest("a boat", steps=n, scheduler="DPM++ 2M", seed=3,
                                                 width=SIZE, height=SIZE))  # fmt: skip
        assert _relative_error(engine.final_latents[("grid", index)], alone) <= 1e-4


def test_second_order_schedulers_report_progress_in_user_steps(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("heun", GenerateRequest("fox", steps=4, scheduler="Heun", width=SIZE, height=SIZE))
    engine.run_until_idle()
    progress = [e for e in engine.events if isinstance(e, JobProgress)]
    assert len(progress) == 7  # Heun calls the UNet 2N-1 times
    assert [p.step for p in progress][-1] == 4 and all(p.total == 4 for p in progress)
    assert [p.step for p in progress] == sorted(p.step for p in progress)


def test_an_iteration_sends_one_progress_message_with_one_event_per_job(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("pair", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE, height=SIZE, count=2))
    engine.add_job("grid", CompareStepsRequest("boat", steps=(2, 3), scheduler="DPM++ 2M", width=SIZE, height=SIZE))
    engine.run_until_idle()
    messages = [e for e in engine.events if isinstance(e, JobProgress | ProgressBatch)]
    assert len(messages) == len(engine.batch_sizes) == 3, "one message per engine iteration"
    assert all(isinstance(m, ProgressBatch) for m in messages)
    batches = [m for m in messages if isinstance(m, ProgressBatch)]
    assert [[e.job_id for e in batch.events] for batch in batches] == [["pair", "grid"]] * 3
    pair = [batch.events[0] for batch in batches]
    assert [e.lane_steps for e in pair] == [((0, 1), (1, 1)), ((0, 2), (1, 2)), ((0, 3), (1, 3))]
    assert [e.job_step for e in pair] == [2, 4, 6] and pair[-1].job_total == 6
    grid = [batch.events[1] for batch in batches]
    assert [e.lane_steps for e in grid] == [((1, 1),), ((0, 1), (1, 2)), ((0, 2), (1, 3))]


def test_previews_are_made_off_the_loop_and_the_first_progress_event_carries_one(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference.engine.lane_engine.PREVIEW_INTERVAL_S", 0.0)
    engine = RecordingEngine(tiny, previews=True)
    engine.add_job("fox", GenerateRequest("fox", steps=4, scheduler="Euler", width=SIZE, height=SIZE))
    engine.step()  # asks the encoder thread for a preview; the first event waits for it
    engine.wait_encodes()
    engine.step()  # asks for the next preview, which rides on a later event
    engine.wait_encodes()
    engine.step()
    first, second, third = [e for e in engine.events if isinstance(e, JobProgress)]
    assert first.step == 1 and first.preview_png is not None
    assert Image.open(io.BytesIO(first.preview_png)).size == (128, 128)
    assert second.step == 2 and second.preview_png is None
    assert third.step == 3 and third.preview_png is not None
    engine.run_until_idle()
    assert len([e for e in engine.events if isinstance(e, JobProgress)]) == 4, "one event per iteration"


def test_lanes_of_different_sizes_never_share_a_unet_call(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("square", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE, height=SIZE, count=2))
    engine.add_job("wide", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE + 64, height=SIZE))
    engine.run_until_idle()
    assert sorted(engine.batch_sizes) == [1, 1, 1, 2, 2, 2]
    assert Image.open(io.BytesIO(engine.result("wide").images[0].png)).size == (SIZE + 64, SIZE)


def test_a_cancelled_job_leaves_the_batch_and_the_rest_finish(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("keep", GenerateRequest("fox", steps=4, width=SIZE, height=SIZE))
    engine.add_job("drop", GenerateRequest("fox", steps=4, width=SIZE, height=SIZE))
    engine.step()
    assert engine.cancel("drop")
    engine.run_until_idle()
    assert engine.batch_sizes == [2, 1, 1, 1]
    assert engine.result("keep").images
    assert not any(isinstance(e, JobResult) and e.job_id == "drop" for e in engine.events)


def test_an_over_long_prompt_is_truncated_and_the_result_says_so(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("long", GenerateRequest("fox " * 100, steps=1, width=SIZE, height=SIZE))
    engine.add_job("short", GenerateRequest("fox", steps=1, width=SIZE, height=SIZE))
    engine.run_until_idle()
    assert engine.result("long").prompt_truncated
    assert not engine.result("short").prompt_truncated


def test_batches_padded_to_compiled_buckets_give_the_same_lanes(tiny: LoadedModel) -> None:
    """The bucketing and padding around a compiled UNet, with the compiler left out (it takes
    minutes on CPU): a batch of 3 runs as 4 rows and each lane still equals its run alone."""
    engine = RecordingEngine(tiny)
    engine.max_batch_lanes = 4
    engine.batch_buckets = (1, 2, 4)
    rows_seen: list[int] = []

    def recording_compiler(unet: Any) -> Any:
        def call(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            rows_seen.append(sample.shape[0] // 2)
            return unet(sample, *args, **kwargs)

        return call

    engine.compile_unet(SIZE, SIZE, compiler=recording_compiler)
    assert rows_seen == [1, 1, 1, 2, 2, 2, 4, 4, 4], "warm-up runs every bucket"
    rows_seen.clear()
    requests = [
        GenerateRequest("fox", steps=3, scheduler="DPM++ 2M", seed=i, width=SIZE, height=SIZE) for i in range(3)
    ]
    for i, request in enumerate(requests):
        engine.add_job(f"job-{i}", request)
    engine.add_job("other-size", GenerateRequest("fox", steps=3, width=SIZE + 64, height=SIZE))
    engine.run_until_idle()
    assert rows_seen == [4, 4, 4], "3 lanes padded to the 4-lane bucket; the other size runs eagerly"
    for i, request in enumerate(requests):
        assert _relative_error(engine.final_latents[(f"job-{i}", 0)], _run_alone(tiny, request)) <= 1e-4


def test_a_job_with_more_cells_than_the_batch_cap_finishes_with_steady_progress(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.max_batch_lanes = 2
    steps = (2, 4, 6, 8)
    engine.add_job("grid", CompareStepsRequest("a boat", steps=steps, scheduler="Euler", seed=3,
                                               width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()
    assert max(engine.batch_sizes) == 2
    assert [image.steps for image in engine.result("grid").images] == list(steps)
    done = [e.job_step for e in engine.events if isinstance(e, JobProgress)]
    assert done == sorted(done) and done[-1] == sum(steps)
    for index, n in enumerate(steps):
        alone = _run_alone(tiny, GenerateRequest("a boat", steps=n, scheduler="Euler", seed=3, width=SIZE, height=SIZE))
        assert _relative_error(engine.final_latents[("grid", index)], alone) <= 1e-4


class UnencodableEngine(RecordingEngine):
    """Decodes to an array Pillow can't turn into an image, so PNG encoding fails in its thread."""

    def decode(self, latents: torch.Tensor, model: LoadedModel, height: int, width: int) -> np.ndarray:
        return np.zeros((latents.shape[0], 2, 2, 7), dtype=np.float64)


def test_an_image_that_fails_to_encode_answers_its_job_with_a_failure(tiny: LoadedModel) -> None:
    engine = UnencodableEngine(tiny)
    engine.add_job("broken", GenerateRequest("fox", steps=1, width=SIZE, height=SIZE, count=2))
    engine.run_until_idle()
    answers = [e for e in engine.events if isinstance(e, JobResult | JobFailed)]
    assert len(answers) == 1 and isinstance(answers[0], JobFailed)
    assert "internal error" in answers[0].message and not answers[0].cancelled


def test_a_job_cancelled_while_its_images_encode_is_answered_once_as_cancelled(tiny: LoadedModel) -> None:
    release = threading.Event()
    encoder = ThreadPoolExecutor(max_workers=1)
    encoder.submit(release.wait)  # holds the only encoder thread
    events: list[JobEvent] = []
    engine = LaneEngine(tiny, events.append, encoder=encoder, previews=False)
    engine.add_job("late", GenerateRequest("fox", steps=2, width=SIZE, height=SIZE))
    while not engine.idle:
        engine.step()
    assert engine.cancel("late"), "denoising is over but the image is still encoding"
    release.set()
    engine.wait_encodes()
    encoder.shutdown()
    answers = [e for e in events if isinstance(e, JobResult | JobFailed)]
    assert len(answers) == 1 and isinstance(answers[0], JobFailed) and answers[0].cancelled
    assert answers[0].steps_run == 2


def test_two_families_in_one_engine_take_turns_and_each_lane_equals_its_run_alone(
    tiny: LoadedModel, load_test_model: LoadTestModel
) -> None:
    flux = load_test_model("tiny-flux")
    engine = RecordingEngine([tiny, flux])
    sd_request = GenerateRequest("a fox", steps=4, scheduler="DPM++ 2M", seed=1, width=SIZE, height=SIZE, count=2)
    flux_request = CompareStepsRequest("a fox", steps=(2, 4), scheduler="Euler", seed=2, guidance=0.0,
                                       width=128, height=128, model="tiny-flux")  # fmt: skip
    engine.add_job("sd", sd_request)
    engine.add_job("flux", flux_request)
    engine.run_until_idle()
    assert engine.batch_models[:4] == ["tiny", "tiny-flux", "tiny", "tiny-flux"], "models take turns"
    assert engine.result("sd").model == "tiny" and engine.result("flux").model == "tiny-flux"
    for index in range(2):
        alone = run_alone(tiny, dataclasses.replace(sd_request, seed=1 + index, count=1))
        assert _relative_error(engine.final_latents[("sd", index)], alone) <= 1e-4
    for index, steps in enumerate((2, 4)):
        alone = run_alone(flux, GenerateRequest("a fox", steps=steps, scheduler="Euler", seed=2, guidance=0.0,
                                                width=128, height=128, model="tiny-flux"))  # fmt: skip
        assert _relative_error(engine.final_latents[("flux", index)], alone) <= 1e-4


def test_a_request_for_a_model_the_engine_has_not_loaded_is_refused(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    with pytest.raises(UnknownModel, match=r"Unknown model .tiny-flux.; this worker runs: tiny\."):
        engine.add_job("x", GenerateRequest("fox", model="tiny-flux"))
    assert engine.idle


# --- admission reuses schedulers and text conditionings ----------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_jobs_built_from_a_kept_scheduler_and_prompt_equal_a_fresh_engines_run(
    tiny: LoadedModel, scheduler: str
) -> None:
    """A later job, and two lanes of one batch, made from the same kept scheduler each step their own
    copy: a shared one would mix their states (multistep history, step index, noise)."""
    request = GenerateRequest("a red fox in snow", steps=STEPS, scheduler=scheduler, seed=1234, guidance=6.0,
                              width=SIZE, height=SIZE, negative_prompt="blurry")  # fmt: skip
    fresh = run_alone(tiny, request)
    engine = RecordingEngine(tiny)
    for jobs in (["first"], ["again"], ["twin-a", "twin-b"]):
        for job in jobs:
            engine.add_job(job, request)
        engine.run_until_idle()
    assert engine.batch_sizes[-1] == 2, "the twins shared their denoiser calls"
    assert torch.equal(engine.final_latents[("first", 0)], fresh)
    assert torch.equal(engine.final_latents[("again", 0)], fresh)
    for twin in ("twin-a", "twin-b"):
        assert relative_error(engine.final_latents[(twin, 0)], fresh) <= 1e-4  # batch numerics: ~1e-7


def test_admission_builds_a_scheduler_and_encodes_a_prompt_once_for_jobs_that_share_them(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = tiny.family
    builds: list[tuple[str, int]] = []
    encodes: list[str] = []
    new_scheduler, encode = family.new_scheduler, family.encode
    monkeypatch.setattr(family, "new_scheduler", lambda name, steps, *a, **kw: builds.append((name, steps)) or
                        new_scheduler(name, steps, *a, **kw))  # fmt: skip
    monkeypatch.setattr(family, "encode", lambda prompt, *a: encodes.append(prompt) or encode(prompt, *a))
    engine = RecordingEngine(tiny)
    for job, (prompt, seed) in enumerate([("a fox", 1), ("a fox", 2), ("a fox", 3), ("a boat", 4)]):
        engine.add_job(f"job-{job}", GenerateRequest(prompt, steps=4, scheduler="DPM2", seed=seed, width=SIZE,
                                                     height=SIZE))  # fmt: skip
    engine.add_job("grid", CompareStepsRequest("a fox", steps=(2, 4), scheduler="DPM2", seed=5, width=SIZE,
                                               height=SIZE))  # fmt: skip
    engine.add_job("sde", GenerateRequest("a fox", steps=4, scheduler="DPM++ SDE", seed=6, width=SIZE, height=SIZE))
    engine.add_job("sde-2", GenerateRequest("a fox", steps=4, scheduler="DPM++ SDE", seed=7, width=SIZE,
                                            height=SIZE))  # fmt: skip
    engine.add_job("other-size", GenerateRequest("a fox", steps=4, scheduler="DPM2", seed=8, width=SIZE // 2,
                                                 height=SIZE // 2))  # fmt: skip
    engine.run_until_idle()

    # DPM++ SDE is built from the lane's seed (its Brownian tree): one per lane, none kept
    assert builds == [("DPM2", 4), ("DPM2", 2), ("DPM++ SDE", 4), ("DPM++ SDE", 4), ("DPM2", 4)]
    assert encodes == ["a fox", "a boat", "a fox"]  # the last at another size: SDXL's conditioning holds it
    assert len({e.job_id for e in engine.events if isinstance(e, JobResult)}) == 8


# --- /compare-schedulers and honest per-cell seconds ------------------------------------------

GRID = CompareSchedulersRequest(
    "a red fox in snow", schedulers=("Euler a", "DPM++ 2M Karras", "UniPC", "DDIM"), steps=(2, 4, 6), seed=77,
    guidance=6.0, width=SIZE, height=SIZE,
)  # fmt: skip


@pytest.fixture(scope="module")
def scheduler_grid(tiny: LoadedModel) -> RecordingEngine:
    engine = RecordingEngine(tiny)
    engine.add_job("grid", GRID)
    engine.run_until_idle()
    return engine


def test_a_scheduler_grid_equals_its_cells_rendered_one_at_a_time(
    tiny: LoadedModel, scheduler_grid: RecordingEngine
) -> None:
    assert max(scheduler_grid.batch_sizes) == len(GRID.lane_steps), "every cell shares the denoiser calls"
    images = scheduler_grid.result("grid").images
    cells = list(zip(GRID.lane_schedulers, GRID.lane_steps, strict=True))
    assert [image.steps for image in images] == list(GRID.lane_steps)
    for index, (scheduler, steps) in enumerate(cells):
        alone = run_alone(tiny, GenerateRequest(GRID.prompt, steps=steps, scheduler=scheduler, seed=GRID.seed,
                                                guidance=GRID.guidance, width=SIZE, height=SIZE))  # fmt: skip
        error = relative_error(scheduler_grid.final_latents[("grid", index)], alone)
        assert error <= 1e-4, f"{scheduler} at {steps} steps differs from its run alone by {error:.2e}"


def test_the_sweet_spot_measure_of_real_runs_is_stable_for_a_fixed_seed(
    tiny: LoadedModel, scheduler_grid: RecordingEngine
) -> None:
    again = RecordingEngine(tiny)
    again.add_job("neighbour", GenerateRequest("a castle", steps=5, seed=3, width=SIZE, height=SIZE, count=2))
    again.add_job("grid", GRID)
    again.run_until_idle()

    first = grid_rows(GRID, scheduler_grid.result("grid").images)
    second = grid_rows(GRID, again.result("grid").images)
    assert [row.scheduler for _, row in first] == list(GRID.schedulers)
    for (_, a), (_, b) in zip(first, second, strict=True):
        assert a.changes == pytest.approx(b.changes, abs=0.05)  # percent; batch numerics differ by ~1e-6
        assert a.settled == b.settled
        assert all(change > 0 for change in a.changes[1:]), "different step counts give different images"


def test_captions_seconds_grow_with_step_count_in_a_busy_batch(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("busy", GenerateRequest("a castle", steps=12, scheduler="Euler", seed=1, width=SIZE,
                                           height=SIZE, count=3))  # fmt: skip
    engine.step()
    engine.step()  # the busy job is two iterations ahead when the grids join
    engine.add_job("steps", CompareStepsRequest("a boat", steps=(1, 2, 4, 8), scheduler="DPM++ 2M", seed=5,
                                                width=SIZE, height=SIZE))  # fmt: skip
    engine.add_job("schedulers", CompareSchedulersRequest("a fox", schedulers=("Euler a", "DDIM"), steps=(1, 3, 6),
                                                          seed=2, width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()

    assert max(engine.batch_sizes) >= 10, "the grids' cells shared calls with the busy job"
    for job in ("steps", "schedulers"):
        result = engine.result(job)
        request = CompareStepsRequest if job == "steps" else CompareSchedulersRequest
        rows = [result.images] if job == "steps" else [result.images[:3], result.images[3:]]
        for row in rows:
            seconds = [image.seconds for image in sorted(row, key=lambda image: image.steps)]
            assert all(0 < a < b for a, b in itertools.pairwise(seconds)), f"{request.__name__}: {seconds}"
        # A job is charged what its cells were: the ledger and the captions use the same shares.
        assert result.gpu_seconds == pytest.approx(sum(image.seconds for image in result.images))
    one_step = next(image for image in engine.result("steps").images if image.steps == 1)
    assert default_caption(one_step).startswith("1 step · ")


def test_a_first_calls_one_off_cost_lands_on_no_cell_of_a_cold_grid(tiny: LoadedModel) -> None:
    """A cold first run: the first call of each shape pays one-off costs (kernel selection, memory growing). The
    clock here makes the very first call (the longest cell, alone) look 1000 s long; charged to it, its caption
    would read minutes beside the others' fractions of a second, as "50 steps · 20.4s" did beside "40 steps · 3.1s"."""
    reads = itertools.count()
    engine = RecordingEngine(tiny, clock=lambda: time.perf_counter() + (1000.0 if next(reads) >= 1 else 0.0))
    engine.add_job("grid", CompareStepsRequest("a boat", steps=(2, 4, 8), scheduler="Euler", seed=5, width=SIZE,
                                               height=SIZE))  # fmt: skip
    engine.run_until_idle()

    result = engine.result("grid")
    assert engine.batch_sizes[:4] == [1, 1, 1, 1], "the 8-step cell ran alone first"
    assert result.gpu_seconds < 1000, "the first call's one-off cost is charged to no cell"
    per_step = [image.seconds / image.steps for image in result.images]
    assert max(per_step) < 10 * min(per_step), per_step  # sharing makes a long cell's steps dearer, never 10x
    assert result.gpu_seconds == pytest.approx(sum(image.seconds for image in result.images))
