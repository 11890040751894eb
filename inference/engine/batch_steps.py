"""Scheduler arithmetic for a batch of lanes as tensor ops over the batch, equal to per-lane `step`.

diffusers' `scale_model_input` and `step` work on one lane at a time and spend most of their time
in Python and in 0-d tensor arithmetic on the schedule (sigmas, alphas, logs). For the common
schedulers that arithmetic depends only on the scheduler's config, its step count and the step
index, so it is computed once per schedule *by the scheduler's own methods* (so the coefficients
are the very float32 values the per-lane path would use) and cached. An engine iteration then does
the per-element work for every lane of a kind in a handful of batched ops, each row using its own
lane's coefficients: elementwise float ops on the same operands in the same order give the same
bits as the per-lane path. Per-lane state (step index, multistep history) and per-lane generators
are kept, so a lane's scheduler always stands where the per-lane path would have left it.

Kinds with an exact batched form: Euler, Euler a and DPM++ 2M (plain and Karras). Every other
scheduler, and any config these forms don't cover, returns no plan and is stepped per lane.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from inference.schedulers import Scheduler

Coefficients = tuple[tuple[float, ...], ...]  # per step index: the kind's float32 coefficients


def _mul(coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`c * x` as a 0-d float32 `c` times `x` computes it: in float32, rounded to x's dtype."""
    if x.dtype == torch.float32:
        return coefficient * x
    return (coefficient * x.float()).to(x.dtype)


def _div(x: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """`x / c` as a 0-d float32 `c` divides `x`: in float32, rounded to x's dtype."""
    if x.dtype == torch.float32:
        return x / coefficient
    return (x.float() / coefficient).to(x.dtype)


def _floats(*values: torch.Tensor | float) -> tuple[float, ...]:
    return tuple(float(value) for value in values)  # float32 -> Python float is exact


@dataclass
class StepBatch:
    """The lanes of one kind in one engine iteration: their schedulers and generators, in row order,
    the denoiser's prediction and their latents (one row each), and their coefficient rows."""

    schedulers: Sequence[Scheduler]
    generators: Sequence[torch.Generator]
    prediction: torch.Tensor
    latents: torch.Tensor
    coefs: torch.Tensor  # (lanes, k, 1, 1, ...) on the device


class BatchKind(abc.ABC):
    """One scheduler kind's batched `scale_model_input` + `step`."""

    name: ClassVar[str]
    scheduler_class: ClassVar[type]  # the diffusers class this kind's batched form is written for
    scales_input: ClassVar[bool] = True  # column 0 of the coefficients divides the model input
    # Whether a lane may start at any step index (img2img): its coefficients depend on that index
    # alone, not on the steps before it.
    starts_anywhere: ClassVar[bool] = True

    @classmethod
    def covers(cls, scheduler: Scheduler) -> bool:
        """Whether this kind's batched form is exact for that scheduler and config (epsilon prediction)."""
        config = scheduler.config
        return type(scheduler) is cls.scheduler_class and config.get("prediction_type") == "epsilon"

    @classmethod
    @abc.abstractmethod
    def coefficients(cls, scheduler: Scheduler) -> Coefficients:
        """Per step index, the coefficients the per-lane path computes (from a fresh scheduler)."""

    def model_input(self, latents: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """The batch's denoiser input from its latents; `coefs` is (lanes, k, 1, 1, ...) on the device."""
        return _div(latents, coefs[:, 0]) if self.scales_input else latents

    @abc.abstractmethod
    def step(self, batch: StepBatch) -> torch.Tensor:
        """Every lane's next latents; advances each lane's scheduler state as its `step` would."""


def _advance(schedulers: Sequence[Scheduler]) -> None:
    for scheduler in schedulers:
        index = scheduler._step_index
        scheduler._step_index = ((scheduler._begin_index or 0) if index is None else index) + 1
        scheduler.is_scale_input_called = True


class SigmaPairKind(BatchKind):
    """A kind whose coefficients at each step index come from that step's sigma and the next one."""

    @staticmethod
    @abc.abstractmethod
    def sigma_row(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step's coefficients."""

    @classmethod
    def coefficients(cls, scheduler: Scheduler) -> Coefficients:
        sigmas = scheduler.sigmas
        return tuple(_floats(*cls.sigma_row(sigmas[i], sigmas[i + 1])) for i in range(len(scheduler.timesteps)))


def _euler_update(batch: StepBatch, sigma: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """The Euler step of both Euler kinds, in float32: sample + (sample - x0) / sigma * dt."""
    sample = batch.latents.to(torch.float32)
    pred_original = sample - _mul(sigma, batch.prediction)
    derivative = (sample - pred_original) / sigma
    return sample + derivative * dt


class Euler(SigmaPairKind):
    name = "Euler"
    scheduler_class = EulerDiscreteScheduler

    @staticmethod
    def sigma_row(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # step() with the engine's defaults (s_churn=0): gamma is 0.0, sigma_hat = sigma * 1.0
        sigma_hat = sigma * (0.0 + 1)
        return (sigma**2 + 1) ** 0.5, sigma_hat, sigma_next - sigma_hat

    def step(self, batch: StepBatch) -> torch.Tensor:
        sigma_hat, dt = batch.coefs[:, 1], batch.coefs[:, 2]
        stepped = _euler_update(batch, sigma_hat, dt)
        _advance(batch.schedulers)
        return stepped.to(batch.prediction.dtype)


class EulerAncestral(SigmaPairKind):
    name = "Euler a"
    scheduler_class = EulerAncestralDiscreteScheduler

    @staticmethod
    def sigma_row(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        return (sigma_from**2 + 1) ** 0.5, sigma_from, sigma_down - sigma_from, sigma_up

    def step(self, batch: StepBatch) -> torch.Tensor:
        sigma, dt, sigma_up = batch.coefs[:, 1], batch.coefs[:, 2], batch.coefs[:, 3]
        prediction, generators = batch.prediction, batch.generators
        prev = _euler_update(batch, sigma, dt)
        # Each lane's noise from its own generator, drawn as diffusers draws it (on the CPU for a CPU
        # generator), then moved to the device in one copy.
        shape = (1, *prediction.shape[1:])
        noise_device = generators[0].device if generators[0].device.type == "cpu" else prediction.device
        noise = torch.cat(
            [randn_tensor(shape, generator=g, device=noise_device, dtype=prediction.dtype) for g in generators]
        ).to(prediction.device, non_blocking=True)
        _advance(batch.schedulers)
        return (prev + _mul(sigma_up, noise)).to(prediction.dtype)


class DPMSolver2M(BatchKind):
    """DPM++ 2M (dpmsolver++, order 2, midpoint), plain or Karras sigmas, epsilon prediction."""

    name = "DPM++ 2M"
    scheduler_class = DPMSolverMultistepScheduler
    scales_input = False  # its scale_model_input is the identity
    starts_anywhere = False  # a lane that starts late takes a first-order step there: per lane

    @classmethod
    def covers(cls, scheduler: Scheduler) -> bool:
        config = scheduler.config
        return (
            super().covers(scheduler)
            and config.algorithm_type == "dpmsolver++"
            and config.solver_order == 2
            and config.solver_type == "midpoint"
            and not config.thresholding
            and config.variance_type not in ("learned", "learned_range")
        )

    @classmethod
    def coefficients(cls, scheduler: Scheduler) -> Coefficients:
        """Per step: 1 (unused), alpha_t, sigma_t of the current sigma (convert_model_output), then
        x = a * sample - b * m0 - c * (r * (m0 - m1)) with c = r = 0 where the step is first-order."""
        config, sigmas, n = scheduler.config, scheduler.sigmas, len(scheduler.timesteps)
        to_alpha_sigma = scheduler._sigma_to_alpha_sigma_t
        rows = []
        for i in range(n):
            lower_order_nums = min(i, config.solver_order)
            lower_order_final = (i == n - 1) and (
                config.euler_at_final or (config.lower_order_final and n < 15) or config.final_sigmas_type == "zero"
            )
            alpha_now, sigma_now = to_alpha_sigma(sigmas[i])
            alpha_t, sigma_t = to_alpha_sigma(sigmas[i + 1])
            alpha_s0, sigma_s0 = to_alpha_sigma(sigmas[i])
            lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
            lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
            h = lambda_t - lambda_s0
            a = sigma_t / sigma_s0
            b = alpha_t * (torch.exp(-h) - 1.0)
            if lower_order_nums < 1 or lower_order_final:
                c = r = torch.zeros(())
            else:  # multistep_dpm_solver_second_order_update, midpoint
                alpha_s1, sigma_s1 = to_alpha_sigma(sigmas[i - 1])
                lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
                h_0 = lambda_s0 - lambda_s1
                r = 1.0 / (h_0 / h)
                c = 0.5 * (alpha_t * (torch.exp(-h) - 1.0))
            rows.append(_floats(1.0, alpha_now, sigma_now, a, b, c, r))
        return tuple(rows)

    def step(self, batch: StepBatch) -> torch.Tensor:
        schedulers, prediction, latents = batch.schedulers, batch.prediction, batch.latents
        alpha_now, sigma_now, a, b, c, r = (batch.coefs[:, k] for k in range(1, 7))
        m0 = _div(latents - _mul(sigma_now, prediction), alpha_now)  # convert_model_output
        rows = m0.split(1)
        previous = [scheduler.model_outputs[-1] for scheduler in schedulers]
        if all(p is None for p in previous):
            m1 = torch.zeros_like(m0)
        else:
            m1 = torch.cat([row if p is None else p for p, row in zip(previous, rows, strict=True)])
        sample = latents.to(torch.float32)
        x = _mul(a, sample) - _mul(b, m0) - _mul(c, _mul(r, m0 - m1))
        for scheduler, row in zip(schedulers, rows, strict=True):
            outputs = scheduler.model_outputs
            for k in range(len(outputs) - 1):
                outputs[k] = outputs[k + 1]
            outputs[-1] = row
            if scheduler.lower_order_nums < scheduler.config.solver_order:
                scheduler.lower_order_nums += 1
        _advance(schedulers)
        return x.to(prediction.dtype)


KINDS: tuple[type[BatchKind], ...] = (Euler, EulerAncestral, DPMSolver2M)
_INSTANCES: dict[type[BatchKind], BatchKind] = {kind: kind() for kind in KINDS}
_TABLES: dict[tuple[Any, ...], Coefficients] = {}


def _first_index_is_zero(scheduler: Scheduler) -> bool:
    """diffusers starts a scheduler with no begin index at the *second* match of a repeated first
    timestep; the batched forms start every lane at index 0, so leave such schedules per lane."""
    if getattr(scheduler, "_begin_index", None) not in (None, 0) or scheduler._step_index is not None:
        return False
    timesteps = scheduler.timesteps
    return bool(len(timesteps) > 0 and int((timesteps == timesteps[0]).sum()) == 1)


def plan_for(scheduler: Scheduler) -> tuple[BatchKind, Coefficients] | None:
    """The batched kind of a freshly set-up scheduler and its coefficient table, or None (per lane)."""
    for kind in KINDS:
        if kind.covers(scheduler):
            break
    else:
        return None
    if not _first_index_is_zero(scheduler):
        return None
    key = (kind, len(scheduler.timesteps), tuple(sorted((k, repr(v)) for k, v in scheduler.config.items())))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = kind.coefficients(scheduler)
    return _INSTANCES[kind], table


def coefficient_rows(rows: list[tuple[float, ...]], latents: torch.Tensor) -> torch.Tensor:
    """(lanes, k, 1, ...) float32 on the latents' device, one row per lane, broadcastable per column."""
    # Pinned for a device: the copy then goes without waiting for the host (no sync on the hot path).
    coefs = torch.tensor(rows, dtype=torch.float32, pin_memory=latents.device.type == "cuda")
    coefs = coefs.view(*coefs.shape, *(1,) * (latents.dim() - 1))
    return coefs.to(latents.device, non_blocking=True)
