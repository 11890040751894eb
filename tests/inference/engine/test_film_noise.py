"""The Steps film's noise levels: one sigma per frame, read off the lane's own schedule (the model's input
noise at that step's first call), on the real tiny pipelines."""

from __future__ import annotations

import pytest

from inference.engine.film import step_noise_levels
from inference.requests import GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine

SIZE = 256


def film_of(load_test_model: LoadTestModel, model: str, scheduler: str, steps: int) -> tuple[float, ...]:
    engine = RecordingEngine(load_test_model(model))
    engine.add_job("film", GenerateRequest("a fox", steps=steps, scheduler=scheduler, seed=3, width=SIZE, height=SIZE,
                                           film=True, model=model))  # fmt: skip
    engine.run_until_idle()
    image = engine.result("film").images[0]
    assert len(image.frame_sigmas) == len(image.frames) == steps
    return image.frame_sigmas


@pytest.mark.parametrize("scheduler", ["Euler", "DPM++ 2M Karras", "Heun"])
def test_a_sigma_schedulers_film_carries_its_own_sigmas_one_per_step(
    load_test_model: LoadTestModel, scheduler: str
) -> None:
    steps = 6
    sigmas = film_of(load_test_model, "tiny", scheduler, steps)
    model = load_test_model("tiny")
    own = model.family.new_scheduler(scheduler, steps, 3, SIZE, SIZE)  # Heun repeats its sigmas: one per step
    assert sigmas == pytest.approx([float(s) for s in own.sigmas[:: own.order][:steps]], rel=2e-2)
    assert list(sigmas) == sorted(sigmas, reverse=True) and sigmas[-1] > 0


def test_ddim_which_keeps_no_sigmas_gets_them_from_its_alphas(load_test_model: LoadTestModel) -> None:
    sigmas = film_of(load_test_model, "tiny", "DDIM", 5)
    assert list(sigmas) == sorted(sigmas, reverse=True) and sigmas[0] > 5 * sigmas[-1] > 0


def test_a_flow_models_film_carries_its_flow_sigmas(load_test_model: LoadTestModel) -> None:
    sigmas = film_of(load_test_model, "tiny-flux", "Euler", 4)
    assert 0 < sigmas[-1] < sigmas[0] <= 1


def test_no_steps_no_levels() -> None:
    assert step_noise_levels(object(), [], 3) == ()  # type: ignore[arg-type]
