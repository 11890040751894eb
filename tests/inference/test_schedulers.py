"""The A1111-name scheduler tables: what each kind of model can run, and fresh lanes every time."""

from __future__ import annotations

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, KDPM2DiscreteScheduler, PNDMScheduler

from inference.requests import SCHEDULER_NAMES
from inference.schedulers import FLOW_SCHEDULERS, make_flow_scheduler, make_scheduler

FLUX_DEV_CONFIG = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
SD_CONFIG = PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True).config


# What A1111 means by each name, in diffusers' terms: (class name, config values that must hold).
A1111_MEANING: dict[str, tuple[str, dict[str, object]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}


def test_every_name_users_know_is_offered() -> None:
    assert set(SCHEDULER_NAMES) == set(A1111_MEANING)


@pytest.mark.parametrize("name", list(A1111_MEANING))
def test_each_name_builds_the_scheduler_a1111_means_by_it(name: str) -> None:
    scheduler = make_scheduler(SD_CONFIG, name, 1)
    class_name, settings = A1111_MEANING[name]
    assert type(scheduler).__name__ == class_name
    for key, value in settings.items():
        assert scheduler.config[key] == value, f"{name}: {key}"
    assert scheduler.config["beta_schedule"] == "scaled_linear", "the model's own noise schedule is kept"


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


def test_each_kind_is_constructed_once_per_config_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """DPM2's constructor takes ~0.4 s (1000 timesteps through a Python loop): built once, then copied."""
    built: list[object] = []
    from_config = KDPM2DiscreteScheduler.from_config.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: object, **kwargs: object) -> object:
        built.append(kwargs)
        return from_config(cls, *args, **kwargs)

    monkeypatch.setattr(KDPM2DiscreteScheduler, "from_config", classmethod(counting))
    config = PNDMScheduler(beta_schedule="scaled_linear", beta_end=0.0123).config  # a config no other test used
    schedulers = [make_scheduler(config, "DPM2", seed) for seed in (1, 2, 3)]
    other = make_scheduler({**config, "beta_end": 0.0124}, "DPM2", 1)
    assert len(built) == 2, "one construction per config"
    assert len({id(s) for s in schedulers}) == 3
    assert other.config.beta_end == 0.0124 and schedulers[0].config.beta_end == 0.0123
    # DPM++ SDE is built from the seed: each one carries its own
    assert make_scheduler(config, "DPM++ SDE", 1).noise_sampler_seed == 1
    assert make_scheduler(config, "DPM++ SDE", 2).noise_sampler_seed == 2


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
