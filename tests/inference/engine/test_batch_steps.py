"""The batched scheduler arithmetic (inference/batch_steps.py) against each lane's own `step`: in a
mixed batch of every scheduler, each lane's latents equal, bit for bit, the same engine run with
every lane stepped through its scheduler's own `step`; and the fast path is really taken."""

from __future__ import annotations

import pytest
import torch

from inference.engine.batch_steps import KINDS, plan_for
from inference.models.loading import LoadedModel
from inference.requests import SCHEDULER_NAMES, CompareStepsRequest, GenerateRequest, Request
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine

SIZE = 64
BATCHED = ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras")


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def _mixed_jobs() -> dict[str, Request]:
    """Every scheduler, two lanes each of different lengths, seeds and guidance, all in one batch."""
    jobs: dict[str, Request] = {}
    for number, name in enumerate(SCHEDULER_NAMES):
        jobs[f"{name}/grid"] = CompareStepsRequest("a red fox", steps=(3, 5), scheduler=name, seed=10 + number,
                                                   guidance=6.0 + number % 3, width=SIZE, height=SIZE)  # fmt: skip
        guidance = 1.0 if number % 4 == 0 else 7.5  # some lanes without CFG rows
        jobs[f"{name}/one"] = GenerateRequest("a boat", steps=4, scheduler=name, seed=50 + number,
                                              guidance=guidance, width=SIZE, height=SIZE)  # fmt: skip
    return jobs


def _run(model: LoadedModel, jobs: dict[str, Request], *, batched_steps: bool) -> RecordingEngine:
    engine = RecordingEngine(model, max_batch_lanes=64, batched_steps=batched_steps)
    for job_id, request in jobs.items():
        engine.add_job(job_id, request)
    engine.run_until_idle()
    return engine


def test_batched_steps_equal_every_lanes_own_step_bit_for_bit_in_a_mixed_batch(tiny: LoadedModel) -> None:
    jobs = _mixed_jobs()
    fast = _run(tiny, jobs, batched_steps=True)
    slow = _run(tiny, jobs, batched_steps=False)
    assert max(fast.batch_sizes) >= 2 * len(SCHEDULER_NAMES), "lanes of every scheduler share denoiser calls"
    assert fast.final_latents.keys() == slow.final_latents.keys()
    for key, latents in fast.final_latents.items():
        assert torch.equal(latents, slow.final_latents[key]), key


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_the_fast_path_covers_the_common_schedulers_and_leaves_the_rest_per_lane(tiny: LoadedModel, name: str) -> None:
    scheduler = make_scheduler(tiny.pipe.scheduler.config, name, 0)
    scheduler.set_timesteps(20)
    plan = plan_for(scheduler)
    assert (plan is not None) == (name in BATCHED)
    if plan is not None:
        kind, table = plan
        assert type(kind) in KINDS and len(table) == 20


def test_batched_lanes_leave_their_schedulers_where_their_own_step_would(tiny: LoadedModel) -> None:
    """Step index and multistep history stay per lane, so any lane could go on stepping by itself."""
    jobs: dict[str, Request] = {
        name: GenerateRequest("fox", steps=5, scheduler=name, seed=3, width=SIZE, height=SIZE) for name in BATCHED
    }
    engines = [RecordingEngine(tiny, batched_steps=flag) for flag in (True, False)]
    for engine in engines:
        for job_id, request in jobs.items():
            engine.add_job(job_id, request)
        for _ in range(3):
            engine.step()
    for job_id in jobs:
        fast, slow = (engine._jobs[job_id].lanes[0].scheduler for engine in engines)
        assert fast.step_index == slow.step_index == 3
        if hasattr(slow, "model_outputs"):
            assert fast.lower_order_nums == slow.lower_order_nums
            assert all(torch.equal(a, b) for a, b in zip(fast.model_outputs, slow.model_outputs, strict=True))
