"""SD 1.x/2.x through its adapter (the engine tests in tests/inference/test_engine.py run on it):
what it reports, and guidance at or below 1 as diffusers runs it: one row, no CFG."""

from __future__ import annotations

import pytest

from inference.loading import LoadedModel
from inference.protocol import DEFAULT_COMPARE_STEPS, SCHEDULER_NAMES, GenerateRequest
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    neighbours_for,
)

SIZE = 64


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def test_sd_reports_every_scheduler_and_todays_defaults(tiny: LoadedModel) -> None:
    info = tiny.info
    assert info.family == "sd" and info.schedulers == SCHEDULER_NAMES
    assert (info.default_steps, info.default_guidance, info.default_scheduler) == (30, 7.5, "Euler a")
    assert info.compare_steps == DEFAULT_COMPARE_STEPS and info.size_multiple == 8


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_at_most_1_runs_one_row_as_the_plain_pipeline_does(tiny: LoadedModel, guidance: float) -> None:
    request = GenerateRequest(
        "a red fox", steps=4, scheduler="Euler", seed=5, guidance=guidance, width=SIZE, height=SIZE
    )
    assert_equals_plain_pipeline(tiny, request, make_scheduler(tiny.pipe.scheduler.config, "Euler", 5))
    assert_mixed_batch_equals_alone(tiny, request, neighbours_for(SIZE, "Euler a", (7.5, 3.0)))
