"""The A1111-name scheduler tables: what each kind of model can run, and fresh lanes every time."""

from __future__ import annotations

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, PNDMScheduler

from inference.protocol import SCHEDULER_NAMES
from inference.schedulers import FLOW_SCHEDULERS, SCHEDULERS, make_flow_scheduler, make_scheduler

FLUX_DEV_CONFIG = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
SD_CONFIG = PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True).config


def test_the_scheduler_table_covers_the_names_users_know() -> None:
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
    for name in ("Euler", "Euler a", "Heun", "DPM2", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM",
                 "PNDM", "LMS", "UniPC"):  # fmt: skip
        assert name in SCHEDULERS


def test_flow_models_get_only_what_diffusers_supports_for_them() -> None:
    assert tuple(FLOW_SCHEDULERS) == ("Euler", "Heun", "DPM++ 2M", "UniPC")
    assert set(FLOW_SCHEDULERS) <= set(SCHEDULER_NAMES)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_noise_scheduler_is_a_fresh_instance(name: str) -> None:
    first, second = make_scheduler(SD_CONFIG, name, 1), make_scheduler(SD_CONFIG, name, 1)
    assert first is not second
    first.set_timesteps(5)
    second.set_timesteps(7)
    assert len(first.timesteps) < len(second.timesteps), "lanes never share a schedule"


@pytest.mark.parametrize("name", list(FLOW_SCHEDULERS))
def test_every_flow_scheduler_runs_an_honest_n_step_schedule(name: str) -> None:
    scheduler = make_flow_scheduler(FLUX_DEV_CONFIG, name, 0, 6, "cpu", mu=0.8)
    calls = len(scheduler.timesteps)
    assert calls == (11 if name == "Heun" else 6), "Heun calls the model 2N-1 times, the others N"
    assert float(scheduler.timesteps[0]) > float(scheduler.timesteps[-1]) > 0
    assert FLUX_DEV_CONFIG["shift"] == 3.0, "the pipeline's scheduler config is never changed"


def test_the_dynamic_shift_moves_every_flow_schedule_the_same_way() -> None:
    for name in FLOW_SCHEDULERS:
        low = make_flow_scheduler(FLUX_DEV_CONFIG, name, 0, 4, "cpu", mu=0.5).timesteps
        high = make_flow_scheduler(FLUX_DEV_CONFIG, name, 0, 4, "cpu", mu=1.15).timesteps
        assert (high[1:] > low[1:]).all(), name
