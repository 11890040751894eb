"""The Steps film's frames: the predicted clean image (x0) of a lane at every step.

Only lanes of a film request pay for this: they step through their scheduler's own `step` (not the
batched arithmetic), keep each step's x0 latents, and VAE-decode them a few at a time between
engine iterations. Many diffusers schedulers report x0 as `pred_original_sample` (LCM as
`denoised`); where one does not, x0 is computed from the model's prediction at the noise level the
model was given, and the frames say which formula stands for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from inference.protocol import SafetyVerdict
from inference.schedulers import Scheduler

# x0 latents decoded per VAE call: a few at a time keeps the decode batched without holding up the
# other lanes for a whole film at once.
FILM_DECODE_BATCH = 8
# Frames are stored at most this large: a film must fit Discord's upload limit anyway.
FILM_MAX_SIDE = 512


@dataclass
class FilmCapture:
    """One film lane's x0 latents per scheduler step (1-based), until they are decoded to frames."""

    pending: dict[int, torch.Tensor] = field(default_factory=dict)
    frames: dict[int, Image.Image] = field(default_factory=dict)
    source: str = ""
    verdicts: dict[int, SafetyVerdict] = field(default_factory=dict)  # the checker's, per frame
    keep: frozenset[int] | None = None  # the steps whose x0 becomes a frame (None: every step)

    def record(self, step: int, x0: torch.Tensor, source: str) -> None:
        """Keep the latest x0 of `step` (a second-order scheduler calls the model twice per step)."""
        if step >= 1 and (self.keep is None or step in self.keep):
            self.pending[step] = x0
            self.source = source

    def ready(self, current_step: int, done: bool) -> list[int]:
        """Steps whose x0 is final (a later step has begun, or the lane is done)."""
        return sorted(step for step in self.pending if done or step < current_step)


def predicted_clean(
    scheduler: Scheduler, model_input: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor, output: object
) -> tuple[torch.Tensor, str]:
    """This step's x0 latents and where they came from (see `GeneratedImage.frames_source`).

    `model_input` is what the model saw: variance-preserving x_t for noise- and v-prediction models
    (schedulers that keep sigma-scaled latents scale them for the model), x_t itself for flow models.
    """
    for name in ("pred_original_sample", "denoised"):
        x0 = getattr(output, name, None)
        if isinstance(x0, torch.Tensor):
            return x0, "scheduler"
    config = scheduler.config
    t_value = float(t)
    if "FlowMatch" in type(scheduler).__name__ or config.get("prediction_type") == "flow_prediction":
        # x_t = (1 - sigma) x0 + sigma noise and v = noise - x0, with t = sigma * num_train_timesteps.
        sigma = t_value / config.num_train_timesteps
        return model_input - sigma * prediction, "flow"
    sigma = _sigma_at(scheduler, t_value)
    x = model_input.to(torch.float32)
    p = prediction.to(torch.float32)
    if config.prediction_type == "v_prediction":
        x0 = (x - sigma * p) / (1 + sigma**2) ** 0.5
        return x0.to(model_input.dtype), "v_prediction"
    x0 = x * (1 + sigma**2) ** 0.5 - sigma * p  # epsilon: (x_t - sqrt(1 - a) eps) / sqrt(a)
    return x0.to(model_input.dtype), "epsilon"


def noise_level(scheduler: Scheduler, t: torch.Tensor | float) -> float:
    """The noise level (sigma) a model is given at training timestep `t` on this scheduler's schedule:
    the flow-matching sigma (t / num_train_timesteps), else sqrt((1 - a) / a)."""
    config = scheduler.config
    if "FlowMatch" in type(scheduler).__name__ or config.get("prediction_type") == "flow_prediction":
        return float(t) / config.num_train_timesteps
    return _sigma_at(scheduler, float(t))


def step_noise_levels(scheduler: Scheduler, timesteps: list[torch.Tensor], steps: int) -> tuple[float, ...]:
    """Sigma at the first model call of each of a lane's `steps` scheduler steps (a second-order
    scheduler calls the model twice a step): where its schedule spends its steps."""
    calls = len(timesteps)
    if not calls or steps < 1:
        return ()
    return tuple(noise_level(scheduler, timesteps[min(calls - 1, -(-k * calls // steps))]) for k in range(steps))


def _sigma_at(scheduler: Scheduler, t: float) -> float:
    """The noise level (sigma = sqrt((1 - a) / a)) the model was given at a possibly fractional training
    timestep, found as diffusers maps sigmas to timesteps: linearly in log-sigma. (DPM++ with Karras
    sigmas rounds the model's timestep; its solver's own x0 differs from this one by that rounding.)"""
    alphas = scheduler.alphas_cumprod.to(torch.float64).cpu().numpy()
    log_sigmas = np.log(((1 - alphas) / alphas) ** 0.5)
    return float(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)))


def to_frame(pixels: np.ndarray) -> Image.Image:
    """A decoded x0 as a frame, no larger than FILM_MAX_SIDE."""
    image = Image.fromarray(pixels)
    scale = FILM_MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image
