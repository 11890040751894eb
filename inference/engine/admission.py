"""Admission to the lane engine: a validated request becomes lanes, each with its own scheduler (copied from
one kept for reuse), seeded generator, latents or input image, and text conditioning (kept for the next
job of the same prompt); a hires pass starts from a first pass's images; a cancelled job leaves."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import torch
from PIL import Image

from inference.engine.answers import EngineAnswers
from inference.engine.batch_steps import plan_for
from inference.engine.film import FilmCapture
from inference.engine.input_image import read_image
from inference.engine.lanes import EngineJob, InputImage, Lane
from inference.families import Conditioning
from inference.models.adapters import AdapterKey, adapter_key
from inference.models.loading import LoadedModel
from inference.protocol import JobFailed
from inference.recent import Recent
from inference.requests import (
    CompareGuidanceRequest,
    CompareStepsRequest,
    GenerateRequest,
    Request,
    input_image,
    lane_request,
    lane_strengths,
)
from inference.schedulers import Scheduler, seed_dependent, step_options
from inference.settling import SettleWatch


@cache
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


class UnknownModel(LookupError):
    """A request names a model this engine has not loaded."""


class Admission(EngineAnswers):
    """Jobs in and out of the engine: a validated request turned into lanes (its model and LoRAs looked up, its
    input image read, its schedulers and text conditionings reused from earlier jobs), a hires pass started
    from a first pass's images, and a job cancelled. The engine (`LaneEngine`) sets the attributes below."""

    models: dict[str, LoadedModel]
    model: LoadedModel
    batched_steps: bool
    _order: Iterator[int]
    _schedulers: Recent[Scheduler]
    _conditionings: Recent[Conditioning]

    @torch.no_grad()
    def add_job(self, job_id: str, request: Request) -> None:
        """Turn a validated request into lanes; they start at the next iteration."""
        self.rates.idle()  # encoding its prompt between two iterations is no iteration's time
        model = self.model_for(request.model)
        adapters = self._adapters_for(model, request)
        conditioning = self._conditioning(model, request, adapters, request.height, request.width)
        job = EngineJob(job_id, request, model, conditioning, next(self._order), adapters)
        source = None
        if png := input_image(request):
            image = read_image(png)
            if isinstance(request, GenerateRequest) and request.upscale_only:
                # Upscale: the input image is the first pass; only the hires pass runs.
                job.all_lanes = [self._placeholder_lane(job, i, seed) for i, seed in enumerate(request.lane_seeds)]
                self._start_hires(job, [image] * request.count)
                self._jobs[job_id] = job
                return
            source = InputImage(model.family.image_pixels(image, request.height, request.width))
        job.hires_pending = isinstance(request, GenerateRequest) and request.hires is not None
        strengths = lane_strengths(request)
        lanes = zip(request.lane_steps, request.lane_seeds, request.lane_schedulers, strict=True)
        job.all_lanes = [self._make_lane(job, i, *lane, source, strengths[i]) for i, lane in enumerate(lanes)]
        if isinstance(request, CompareStepsRequest) and request.stop_early:
            self._stop_early(job)
        if isinstance(request, CompareGuidanceRequest):
            for lane, guidance in zip(job.all_lanes, request.lane_guidances, strict=True):
                lane.own_conditioning = self._conditioning(
                    model, request, adapters, request.height, request.width, guidance
                )
        job.lanes = list(job.all_lanes)
        self._jobs[job_id] = job

    @staticmethod
    def _stop_early(job: EngineJob) -> None:
        """A stop-early grid: its longest cell's run also keeps its x0 at every shorter step count (film
        frames of those steps only), stepping through its scheduler's own `step`, which reports x0."""
        longest = max(job.all_lanes, key=lambda lane: lane.steps)
        shorter = frozenset(lane.steps for lane in job.all_lanes if lane.steps < longest.steps)
        longest.film = FilmCapture(keep=shorter)
        longest.kind, longest.table = None, ()

    def _conditioning(
        self,
        model: LoadedModel,
        request: Request,
        adapters: AdapterKey,
        height: int,
        width: int,
        guidance: float | None = None,
    ) -> Conditioning:
        """The request's text conditioning with these LoRAs at this size, at the request's guidance
        or `guidance` (kept for later jobs)."""
        guidance = request.guidance if guidance is None else guidance
        text = (request.prompt, request.negative_prompt, guidance, height, width)

        def encode() -> Conditioning:
            self._activate(model, adapters)  # a LoRA with text-encoder layers changes the conditioning
            return model.family.encode(*text)

        return self._conditionings.get((model.name, adapters, *text), encode)

    def _placeholder_lane(self, job: EngineJob, index: int, seed: int) -> Lane:
        """An Upscale's first pass: its input image, no steps run."""
        scheduler = job.request.lane_schedulers[index]
        lane = self._make_lane(job, index, 1, seed, scheduler, InputImage(torch.empty(0)), 1.0)
        lane.timesteps, lane.ran, lane.awaiting_image = [], 0, False
        return lane

    def _start_hires(self, job: EngineJob, images: list[Image.Image]) -> None:
        """Move a job on to its hires pass: each first-pass image resized in pixel space (Lanczos, as
        A1111's "Lanczos" upscaler), then an img2img lane from it at the larger size, its own steps
        and strength, the same seed and scheduler."""
        request = job.request
        assert isinstance(request, GenerateRequest) and request.hires is not None
        hires = request.hires
        job.first_pass, job.hires_pending = job.all_lanes, False
        job.width, job.height = request.output_size
        job.conditioning = self._conditioning(job.model, request, job.adapters, job.height, job.width)
        family = job.model.family
        lanes = []
        for lane, image in zip(job.first_pass, images, strict=True):
            upscaled = image.resize((job.width, job.height), Image.Resampling.LANCZOS)
            source = InputImage(family.image_pixels(upscaled, job.height, job.width))
            scheduler = request.lane_schedulers[lane.index]
            lanes.append(self._make_lane(job, lane.index, hires.steps, lane.seed, scheduler, source, hires.strength))
        job.all_lanes = lanes
        job.lanes = list(lanes)

    def model_for(self, name: str) -> LoadedModel:
        """The loaded model of that name ("" = the default one)."""
        if not name:
            return self.model
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"Unknown model {name!r}; this worker runs: {', '.join(self.models)}.") from None

    @staticmethod
    def _adapters_for(model: LoadedModel, request: Request) -> AdapterKey:
        """The request's LoRAs as a group key; UnknownLora (an InvalidRequest) for one the model lacks."""
        for name, _ in request.loras:
            model.info.lora(name)
        return adapter_key(request.loras)

    @staticmethod
    def _activate(model: LoadedModel, adapters: AdapterKey) -> None:
        if model.adapters is not None:
            model.adapters.activate(adapters)

    def _make_lane(
        self,
        job: EngineJob,
        index: int,
        steps: int,
        seed: int,
        scheduler_name: str,
        source: InputImage | None = None,
        strength: float = 1.0,
    ) -> Lane:
        family = job.model.family
        request = lane_request(job.request, index)  # a LoRA comparison's plain row: without the LoRAs
        size = (job.height, job.width)
        few_step = job.model.info.few_step_lora(request.loras) is not None
        if seed_dependent(scheduler_name):  # one per seed: nothing to reuse
            scheduler = family.new_scheduler(scheduler_name, steps, seed, *size, few_step=few_step)
        else:
            key = (job.model.name, scheduler_name, steps, *size, few_step)
            ready = self._schedulers.get(
                key, lambda: family.new_scheduler(scheduler_name, steps, seed, *size, few_step=few_step)
            )
            scheduler = copy.deepcopy(ready)  # never stepped: each lane steps its own copy
        generator = torch.Generator("cpu").manual_seed(seed)
        step_kwargs: dict[str, Any] = step_options(scheduler_name)  # TCD's eta
        if _accepts(type(scheduler).step, "generator"):
            step_kwargs["generator"] = generator
        filmed = isinstance(request, GenerateRequest) and request.film
        auto = isinstance(request, GenerateRequest) and request.auto_steps
        # A film lane (and an auto one) steps through its scheduler's own `step`, whose output carries x0.
        plan = plan_for(scheduler) if self.batched_steps and not filmed and not auto else None
        start = 0
        if source is None:
            latents = family.initial_latents(scheduler, job.height, job.width, generator)
        else:
            # img2img: the lane starts part-way down its schedule; its latents (the encoded image,
            # noised to that timestep) are made when it first runs, the VAE encode batched.
            start = family.img2img_start(scheduler, steps, strength)
            latents = torch.empty(0)
            if plan is not None:
                plan = (plan[0], plan[1][start:]) if start == 0 or plan[0].starts_anywhere else None
        timesteps = list(scheduler.timesteps)[start:]
        own_conditioning = own_adapters = None
        if request is not job.request:
            own_adapters = adapter_key(request.loras)
            own_conditioning = self._conditioning(job.model, request, own_adapters, job.height, job.width)
        return Lane(
            job=job,
            index=index,
            steps=steps,
            seed=seed,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            generator=generator,
            step_kwargs=step_kwargs,
            kind=plan[0] if plan else None,
            table=plan[1] if plan else (),
            film=FilmCapture() if filmed else None,
            ran=steps - start // scheduler.order,
            source=source,
            awaiting_image=source is not None,
            from_image=source is not None,
            strength=strength,
            own_conditioning=own_conditioning,
            own_adapters=own_adapters,
            auto=SettleWatch(steps) if auto else None,
        )

    def cancel(self, job_id: str) -> bool:
        """Stop a job, even one whose images are being encoded; it is answered as cancelled."""
        job = self._jobs.pop(job_id, None) or self._encoding.get(job_id)
        if job is None or not self._claim_answer(job):
            return False
        self.rates.idle()  # the time until the next iteration is partly this cancel's
        self._settle_first_calls([*job.first_pass, *job.all_lanes])
        self.emit(JobFailed(job_id, "Cancelled.", cancelled=True, gpu_seconds=job.gpu_seconds,
                            steps_run=job.steps_done))  # fmt: skip
        return True
