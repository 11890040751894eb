"""A lane (one denoising run: its scheduler, latents, seed and place in its own timesteps) and the job
that owns a set of lanes; what the lane engine batches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inference.engine.batch_steps import BatchKind, Coefficients
from inference.engine.film import FilmCapture
from inference.families import Conditioning, EncodedImage
from inference.models.adapters import AdapterKey
from inference.models.loading import LoadedModel
from inference.protocol import GeneratedImage, SafetyVerdict
from inference.requests import GenerateRequest, Request, img2img_steps
from inference.schedulers import Scheduler
from inference.settling import SettleWatch


@dataclass(eq=False)
class InputImage:
    """An img2img lane's input: preprocessed for the VAE, then its encoding (made once, when the first
    lane that starts from it runs, batched with the other new inputs of that iteration)."""

    pixels: torch.Tensor
    encoded: EncodedImage | None = None


@dataclass(eq=False)
class Lane:
    job: EngineJob
    index: int
    steps: int
    seed: int
    scheduler: Scheduler
    timesteps: list[torch.Tensor]
    latents: torch.Tensor
    generator: torch.Generator
    step_kwargs: dict[str, Any]
    kind: BatchKind | None = None  # batched scheduler arithmetic for this lane's kind (None: per-lane step)
    table: Coefficients = ()  # the kind's coefficients per step index
    position: int = 0
    # What this lane cost: its share of every batched call it took part in (CPU seconds, or CUDA
    # events read once its image is done).
    cpu_seconds: float = 0.0
    gpu_spans: list[tuple[Any, Any, float]] = field(default_factory=list)
    film: FilmCapture | None = None  # a film lane keeps every step's predicted clean image
    # img2img: the scheduler steps this lane runs of its `steps` (it starts part-way down its
    # schedule), and whether its first latents (the image's, noised) are still to be made.
    ran: int = 0
    source: InputImage | None = None
    awaiting_image: bool = False
    from_image: bool = False
    strength: float = 1.0
    decoded: np.ndarray | None = None  # a hires job's first-pass image, until its hires pass starts
    # A LoRA comparison's plain row runs without the job's LoRAs, at its own guidance: such a lane
    # carries its own conditioning and adapter set (None: the job's).
    own_conditioning: Conditioning | None = None
    own_adapters: AdapterKey | None = None
    # `steps: auto`: its checks, its latest predicted clean image (x0 latents), and once it settles, that
    # x0 decoded (its image: no second decode) and the noise level left where it stopped.
    auto: SettleWatch | None = None
    x0: torch.Tensor | None = None
    settled_pixels: np.ndarray | None = None
    stopped_sigma: float = 0.0

    def __post_init__(self) -> None:
        self.ran = self.ran or self.steps

    @property
    def conditioning(self) -> Conditioning:
        return self.job.conditioning if self.own_conditioning is None else self.own_conditioning

    @property
    def adapters(self) -> AdapterKey:
        return self.job.adapters if self.own_adapters is None else self.own_adapters

    @property
    def group(self) -> tuple[str, AdapterKey, int, int]:
        """Lanes batch only with lanes of the same model, LoRAs (and weights) and size."""
        return (self.job.model.name, self.adapters, self.job.height, self.job.width)

    @property
    def done(self) -> bool:
        return self.position >= len(self.timesteps)

    @property
    def remaining(self) -> int:
        """UNet calls left."""
        return len(self.timesteps) - self.position

    @property
    def progress_steps(self) -> int:
        """Scheduler steps done, in the user's terms (second-order schedulers call the UNet twice)."""
        if not self.timesteps:
            return 0
        return min(self.ran, math.floor(self.position * self.ran / len(self.timesteps) + 1e-9))

    @property
    def rows(self) -> int:
        """Rows this lane adds to a denoiser call: two with classifier-free guidance, else one."""
        return 1 if self.conditioning.uncond is None else 2

    @property
    def seconds(self) -> float:
        """Its share of the batched device time so far; reading CUDA events waits for them."""
        total = self.cpu_seconds
        for start, end, share in self.gpu_spans:
            end.synchronize()
            total += start.elapsed_time(end) / 1000 * share
        return total


@dataclass(eq=False)
class EngineJob:
    job_id: str
    request: Request
    model: LoadedModel
    conditioning: Conditioning
    order: int
    adapters: AdapterKey = ()  # its LoRAs with their weights (name order): lanes batch only within one set
    all_lanes: list[Lane] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)  # still denoising
    images: dict[int, GeneratedImage] = field(default_factory=dict)
    pending_encodes: int = 0
    last_preview_at: float = 0.0
    preview_png: bytes | None = None  # encoded off the denoising thread, sent with the next progress
    preview_verdict: SafetyVerdict | None = None  # the checker's verdict on the latest preview
    previewing: bool = False
    progress_sent: bool = False  # its first progress event has gone out
    answered: bool = False  # a result, failure or cancellation has been emitted (guarded by the engine's lock)
    height: int = 0  # the size its lanes run at now (a hires pass runs larger than the first)
    width: int = 0
    first_pass: list[Lane] = field(default_factory=list)  # a hires job's first-pass lanes, once done
    hires_pending: bool = False  # its lanes are a first pass that a hires pass follows

    def __post_init__(self) -> None:
        self.height = self.height or self.request.height
        self.width = self.width or self.request.width

    @property
    def group(self) -> tuple[str, AdapterKey, int, int]:
        """Lanes batch only with lanes of the same model, LoRAs (and weights) and size."""
        return (self.model.name, self.adapters, self.height, self.width)

    @property
    def steps_done(self) -> int:
        return sum(lane.progress_steps for lane in [*self.first_pass, *self.all_lanes])

    @property
    def steps_total(self) -> int:
        """Steps of every pass: a hires job's second pass counts from the start."""
        request = self.request
        hires = request.hires if isinstance(request, GenerateRequest) else None
        later = 0
        if self.hires_pending and hires is not None:
            flow = self.model.family.flow
            later = len(self.all_lanes) * img2img_steps(hires.steps, hires.strength, flow=flow)
        return sum(lane.ran for lane in [*self.first_pass, *self.all_lanes]) + later

    def due_lanes(self) -> list[Lane]:
        """Lanes that should run now, longest first. A lane starts once the job's longest started lane
        has as many UNet calls left as it needs, so all of a job's cells finish together."""
        started = [lane for lane in self.lanes if lane.position > 0]
        clock = max(lane.remaining for lane in started or self.lanes)
        due = [lane for lane in self.lanes if lane.position > 0 or lane.remaining >= clock]
        return sorted(due, key=lambda lane: -lane.remaining)

    @property
    def gpu_seconds(self) -> float:
        """Device time of this job's lanes' shares of each batch; reading CUDA events waits for them."""
        return sum(lane.seconds for lane in [*self.first_pass, *self.all_lanes])
