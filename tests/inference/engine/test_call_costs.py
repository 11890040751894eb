"""What a lane costs: its share of every batched call by the rows it adds, so a cell's seconds grow with its steps in
a busy batch, and a first call's one-off cost lands on no cell of a cold grid."""

from __future__ import annotations

import itertools
import time

import pytest

from bot.pictures.render import default_caption
from inference.models.loading import LoadedModel
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine

SIZE = 256


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


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
