"""Admission: a model the engine has not loaded refused, a cancelled job leaving the batch, and schedulers and text
conditionings kept for later jobs (each lane stepping its own copy) built once."""

from __future__ import annotations

import pytest
import torch

from inference.engine.admission import UnknownModel
from inference.models.loading import LoadedModel
from inference.protocol import JobResult
from inference.requests import SCHEDULER_NAMES, CompareStepsRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256
STEPS = 6


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


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


def test_a_request_for_a_model_the_engine_has_not_loaded_is_refused(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    with pytest.raises(UnknownModel, match=r"Unknown model .tiny-flux.; this worker runs: tiny\."):
        engine.add_job("x", GenerateRequest("fox", model="tiny-flux"))
    assert engine.idle


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
