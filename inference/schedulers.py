"""Schedulers by the A1111 names users know: one table per kind of model.

Noise-prediction models (SD 1.x/2.x, SDXL) run diffusers' discrete schedulers; flow-matching
models (FLUX, SD3) only what diffusers really supports for them: the FlowMatch Euler and Heun
schedulers, and DPM++ 2M / UniPC with flow sigmas. Every lane gets a fresh instance built from the
pipeline's scheduler config; the pipeline's own scheduler is never touched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from inference.recent import Recent
from inference.requests import SCHEDULER_NAMES

Scheduler = Any  # a SchedulerMixin subclass: diffusers attaches its methods dynamically

# A1111 name -> (diffusers scheduler class, from_config overrides), for noise-prediction models.
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": (DPMSolverSDEScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "LMS": (LMSDiscreteScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),
    "TCD": (TCDScheduler, {}),
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "protocol.SCHEDULER_NAMES and SCHEDULERS must agree"

# The same names for flow-matching models (velocity prediction over sigmas in [0, 1]).
_FLOW = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
FLOW_SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "Euler": (FlowMatchEulerDiscreteScheduler, {}),
    "Heun": (FlowMatchHeunDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, _FLOW),
    "UniPC": (UniPCMultistepScheduler, _FLOW),
}
assert set(FLOW_SCHEDULERS) <= set(SCHEDULER_NAMES)


# Each scheduler kind built once per config and options, then copied: diffusers builds some slowly
# (DPM2 and DPM2 a compute 1000 timesteps through a Python loop in `__init__`, ~0.4 s on a CPU, on
# the engine thread, while every running lane waits).
_CONSTRUCTED: Recent[Scheduler] = Recent(64)


# TCD's stochasticity per step (its paper's gamma, diffusers' `eta`): 0.3, as diffusers' TCD docs and
# the TCD-LoRA cards run it (diffusers' pipelines pass their own `eta`, 0 unless given).
TCD_ETA = 0.3


def step_options(name: str) -> dict[str, Any]:
    """Keyword arguments a lane of this scheduler passes to every `step` (as a pipeline call would)."""
    return {"eta": TCD_ETA} if SCHEDULERS[name][0] is TCDScheduler else {}


def seed_dependent(name: str) -> bool:
    """Whether a scheduler of this name is built from the lane's seed (DPM++ SDE's Brownian tree)."""
    return SCHEDULERS[name][0] is DPMSolverSDEScheduler


def make_scheduler(base_config: Any, name: str, seed: int, *, flow: bool = False, **extra: Any) -> Scheduler:
    """A fresh scheduler for one lane from the pipeline's scheduler config."""
    cls, overrides = (FLOW_SCHEDULERS if flow else SCHEDULERS)[name]
    overrides = {**overrides, **extra}
    if cls is DPMSolverSDEScheduler:
        # Its Brownian-tree noise is seeded per instance, so each lane stays reproducible.
        overrides = {**overrides, "noise_sampler_seed": seed}
    if flow and cls is not FlowMatchEulerDiscreteScheduler and cls is not FlowMatchHeunDiscreteScheduler:
        overrides.setdefault("flow_shift", base_config.get("shift", 1.0))
    scheduler: Scheduler
    if cls is DPMSolverSDEScheduler:
        scheduler = cls.from_config(base_config, **overrides)  # one per seed: nothing to reuse
        return scheduler
    # A config's repr lists its values in full (its lists and numbers): equal reprs, equal schedulers.
    # The copies rely on diffusers' configs being deep-copyable; the engine tests compare copied lanes
    # with fresh runs for every scheduler, so a diffusers upgrade that breaks this fails there.
    key = (cls, repr(sorted(base_config.items())), repr(sorted(overrides.items())))
    scheduler = copy.deepcopy(_CONSTRUCTED.get(key, lambda: cls.from_config(base_config, **overrides)))
    return scheduler


def make_flow_scheduler(
    base_config: Any,
    name: str,
    seed: int,
    steps: int,
    device: Any,
    *,
    mu: float,
    sigmas: Any = None,
) -> Scheduler:
    """A flow-matching lane's scheduler with its timesteps set, as the family's pipeline sets them.

    `mu` is the resolution-dependent shift, used where the config asks for dynamic shifting;
    `sigmas` the explicit schedule a pipeline passes to Euler (FLUX does, SD3 does not).
    """
    dynamic = bool(base_config.get("use_dynamic_shifting", False))
    scheduler: Scheduler
    if name == "Euler":
        scheduler = make_scheduler(base_config, name, seed, flow=True)
        if sigmas is not None:
            scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)
        else:
            scheduler.set_timesteps(steps, device=device, mu=mu if dynamic else None)
    elif name == "Heun":
        # FlowMatchHeun takes a fixed shift; exp(mu) is the same time shift the dynamic one applies.
        shift = math.exp(mu) if dynamic else base_config.get("shift", 1.0)
        scheduler = make_scheduler(base_config, name, seed, flow=True, shift=shift)
        scheduler.set_timesteps(steps, device=device)
    else:  # DPM++ 2M, UniPC with flow sigmas: the scheduler makes its own sigmas from the shift
        scheduler = make_scheduler(base_config, name, seed, flow=True)
        scheduler.set_timesteps(steps, device=device, mu=mu if dynamic else None)
    scheduler.set_begin_index(0)
    return scheduler
