"""The batched lane engine, family-agnostic: it groups lanes by (model, LoRAs, height, width) and steps each.

Every denoising run is a *lane* (its own scheduler instance, latents and seeded generator). Each
engine iteration stacks the active lanes of one group into ONE denoiser call with per-sample
timesteps (the model's family adapter builds that call), then steps each lane with its own
scheduler. Lanes join and leave between iterations; models, LoRA sets and sizes take turns (a LoRA
set is switched between calls with `set_adapters`, never reloaded: inference.models.adapters)."""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from inference.engine.batch_steps import BatchKind, StepBatch, coefficient_rows, plan_for
from inference.engine.film import (
    FILM_DECODE_BATCH,
    FilmCapture,
    noise_level,
    predicted_clean,
    step_noise_levels,
    to_frame,
)
from inference.engine.lanes import EngineJob, InputImage, Lane
from inference.engine.rates import IterationRates
from inference.families import Conditioning, DenoiserBatch
from inference.imaging import encode_png, latent_preview_png, png_pixels
from inference.models.adapters import AdapterKey, adapter_key
from inference.models.loading import LoadedModel
from inference.parameters import auto_steps_note, image_infotext
from inference.protocol import (
    GUIDANCE_INPUT,
    INTERNAL_ERROR_MESSAGE,
    OUT_OF_MEMORY_MESSAGE,
    CompareGuidanceRequest,
    CompareStepsRequest,
    GeneratedImage,
    GenerateRequest,
    JobEvent,
    JobFailed,
    JobProgress,
    JobResult,
    ProgressBatch,
    Request,
    SafetyVerdict,
    StepRate,
    input_image,
    lane_request,
    lane_strengths,
)
from inference.recent import Recent
from inference.safety import ImageChecker
from inference.schedulers import Scheduler, seed_dependent, step_options
from inference.settling import SettleWatch

log = logging.getLogger(__name__)


T = TypeVar("T")


PREVIEW_INTERVAL_S = 1.5


# Batch sizes (in lanes) a compiled denoiser is specialised for; a batch is padded up to the next one.
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)


CUDA_GRAPH_COMPILER = partial(torch.compile, mode="reduce-overhead", fullgraph=True)


# Admission runs on the engine thread between two iterations, so every running lane waits for it. It
# reuses what earlier jobs built: schedulers with their timesteps set (DPM2's `set_timesteps` alone
# takes 10–15 ms for 30 steps on a CPU), each lane getting its own copy, and text conditionings
# (read-only once built; a re-roll or a film of the same prompt skips the text encoders). How many of
# each are kept, the least recently used dropped first:
SCHEDULERS_KEPT = 64


CONDITIONINGS_KEPT = 16


@cache
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _guidance_fields(job: EngineJob, lane: Lane) -> dict[str, Any]:
    """A guidance grid's cell: its own guidance, written as FLUX-dev's distilled one on that model."""
    request = job.request
    if not isinstance(request, CompareGuidanceRequest):
        return {}
    distilled = job.model.family.name == "flux" and job.model.info.guidance_mode == GUIDANCE_INPUT
    return {"guidance": request.lane_guidances[lane.index], "distilled": distilled}


def _auto_fields(lane: Lane) -> dict[str, Any]:
    """An auto lane's note in its PNG text (its "Steps" are the steps that ran)."""
    if lane.auto is None:
        return {}
    settled = lane.settled_pixels is not None
    return {"auto_note": auto_steps_note(lane.ran, lane.steps, settled=settled, sigma=lane.stopped_sigma)}


class UnknownModel(LookupError):
    """A request names a model this engine has not loaded."""


class UnreadableImage(ValueError):
    """A request's input image can't be decoded (the bot checks first: this is the worker's guard)."""


# The worker's own guard against a decompression bomb, well above protocol.MAX_PIXELS.
MAX_INPUT_PIXELS = 4 * 2048 * 2048


def read_image(png: bytes) -> Image.Image:
    """An input image's bytes as an RGB image; raises UnreadableImage."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise UnreadableImage(f"The input image is {image.width}x{image.height}: too many pixels.")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnreadableImage):
            raise
        raise UnreadableImage("The input image could not be read as an image.") from exc


class BatchError(RuntimeError):
    """An engine iteration failed; its jobs were answered with a failure and removed."""

    def __init__(self, job_ids: list[str], *, out_of_memory: bool) -> None:
        super().__init__(f"{'out of memory' if out_of_memory else 'error'} in a batch of jobs {job_ids}")
        self.job_ids = job_ids
        self.out_of_memory = out_of_memory


Emit = Callable[[JobEvent | ProgressBatch], None]
# One batched call's shape: what it ran, the lanes' group (model, LoRAs, size), lanes and rows.
CallShape = tuple[str, tuple[str, AdapterKey, int, int], int, int]
CallCost = float | tuple[Any, Any]  # CPU seconds, or the CUDA events around the call


def _charge(lane: Lane, cost: CallCost, share: float) -> None:
    """Add `share` of a call's cost to what the lane cost."""
    if isinstance(cost, tuple):
        lane.gpu_spans.append((cost[0], cost[1], share))
    else:
        lane.cpu_seconds += cost * share


class LaneEngine:
    """Continuous batching of denoising lanes over one or more loaded pipelines (the first is the
    default model); different models and sizes take turns.

    Every job gets exactly one answer through `emit`: its JobResult, or a JobFailed when it is
    cancelled or its batch or image encoding fails.
    """

    def __init__(
        self,
        models: LoadedModel | Sequence[LoadedModel],
        emit: Emit,
        *,
        max_batch_lanes: int = 8,
        encoder: ThreadPoolExecutor | None = None,
        previews: bool = True,
        batched_steps: bool = True,
        checker: ImageChecker | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        loaded = [models] if isinstance(models, LoadedModel) else list(models)
        if not loaded:
            raise ValueError("an engine needs at least one model")
        self.models: dict[str, LoadedModel] = {model.name: model for model in loaded}
        self.model = loaded[0]  # the default model
        self.emit = emit
        self.max_batch_lanes = max_batch_lanes
        self.previews = previews
        self.checker = checker  # every decoded picture gets its verdict before it leaves the engine
        self.batched_steps = batched_steps  # False: every lane through its scheduler's own step (tests)
        self.batch_buckets = tuple(sorted({*(b for b in BATCH_BUCKETS if b < max_batch_lanes), max_batch_lanes}))
        self._compiled_unet: Any = None
        self._compiled_group: tuple[str, AdapterKey, int, int] | None = None
        self._encoder = encoder or ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
        self._owns_encoder = encoder is None
        self._jobs: dict[str, EngineJob] = {}  # jobs with lanes still denoising
        self._encoding: dict[str, EngineJob] = {}  # jobs whose images are being encoded
        self._order = itertools.count()
        self._group_turn = 0
        self._encodes: set[Future[None]] = set()
        self._lock = threading.Lock()  # guards job bookkeeping shared with the encoder threads
        self._cuda = self.model.device.type == "cuda"
        self._schedulers: Recent[Scheduler] = Recent(SCHEDULERS_KEPT)
        self._conditionings: Recent[Conditioning] = Recent(CONDITIONINGS_KEPT)
        self._clock = clock  # what batched calls are timed with, on a CPU
        # A call of a shape not run before pays first-use costs (kernel selection, allocation) that are not
        # its lanes' work: they are charged at the shape's next call instead (see `_timed`).
        self._shapes_run: set[CallShape] = set()
        self._first_calls: dict[CallShape, tuple[CallCost, list[tuple[Lane, float]]]] = {}
        device = self.model.device
        self.rates = IterationRates(torch.cuda.get_device_name(device) if self._cuda else device.type)

    # -- admission ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No lane is denoising (images may still be encoding)."""
        return not self._jobs

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

    def _claim_answer(self, job: EngineJob) -> bool:
        """True for the one caller allowed to answer this job (results race cancels and failures)."""
        with self._lock:
            if job.answered:
                return False
            job.answered = True
            self._encoding.pop(job.job_id, None)
            return True

    def _fail(self, job: EngineJob, message: str, *, retryable: bool = False) -> None:
        self._jobs.pop(job.job_id, None)
        if self._claim_answer(job):
            self.emit(JobFailed(job.job_id, message, retryable=retryable, gpu_seconds=job.gpu_seconds,
                                steps_run=job.steps_done))  # fmt: skip

    # -- iteration ---------------------------------------------------------------------------

    def _next_batch(self) -> list[Lane]:
        """The due lanes of one (model, LoRAs, size) group (groups take turns), oldest job first, up to the cap.
        A LoRA comparison's two rows are lanes of two groups."""
        groups: dict[tuple[str, AdapterKey, int, int], list[Lane]] = {}
        for job in sorted(self._jobs.values(), key=lambda j: j.order):
            for lane in job.due_lanes():
                groups.setdefault(lane.group, []).append(lane)
        if not groups:
            return []
        keys = sorted(groups)
        key = keys[self._group_turn % len(keys)]
        self._group_turn += 1
        return groups[key][: self.max_batch_lanes]

    def step(self) -> int:
        """Run one UNet call over a batch of lanes and advance them; returns the lanes run."""
        lanes = self._next_batch()
        if not lanes:
            self.rates.idle()
            return 0
        started = self._clock()
        self.rates.iteration_started(started)
        jobs = list({lane.job: None for lane in lanes})
        try:
            starting = [lane for lane in lanes if lane.awaiting_image]
            if starting:
                self._timed(starting, self._start_from_images, "encode")
            self._timed(lanes, self._denoise, "denoise")
            checking = [
                lane for lane in lanes if lane.auto is not None and not lane.done and lane.auto.due(lane.progress_steps)
            ]
            if checking:
                self._timed(checking, self._check_settled, "settle-check")
            shape = (lanes[0].job.model.name, lanes[0].job.width, lanes[0].job.height, len(lanes))
            finished = [lane for lane in lanes if lane.done]
            self.rates.iteration_ran(shape, started, steady=not starting and not finished)
            self._report_progress(lanes, jobs)
            if finished:
                self._finish(finished)
        except Exception as exc:
            out_of_memory = isinstance(exc, torch.cuda.OutOfMemoryError)
            if out_of_memory:
                torch.cuda.empty_cache()
            self._settle_first_calls([lane for job in jobs for lane in (*job.first_pass, *job.all_lanes)])
            for job in jobs:
                if out_of_memory:
                    self._fail(job, OUT_OF_MEMORY_MESSAGE, retryable=True)
                else:
                    self._fail(job, INTERNAL_ERROR_MESSAGE.format(ref=job.job_id[:8]))
            raise BatchError([job.job_id for job in jobs], out_of_memory=out_of_memory) from exc
        return len(lanes)

    def _timed(self, lanes: list[Lane], work: Callable[[list[Lane]], T], what: str) -> T:
        """Run `work` on a batch of lanes and charge each lane its share of the time, by the rows it
        adds to the batch (CUDA events: no host sync). A job's time is the sum of its lanes'.

        The first call of a shape (`what` on this group and batch) also pays one-off costs: kernel
        selection, memory growing, lazy set-up. Charged to the lanes in it, they would land on the
        longest cell of a cold grid, alone in the first iterations ("50 steps · 20.4s" beside
        "40 steps · 3.1s"), so its lanes are charged at the rate of the same shape's next call, or at
        their own call's if they finish before there is one (`_settle_first_calls`)."""
        rows = sum(lane.rows for lane in lanes)
        cost: CallCost
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = work(lanes)
            end.record()
            cost = (start, end)
        else:
            started = self._clock()
            out = work(lanes)
            cost = self._clock() - started
        shares = [(lane, lane.rows / rows) for lane in lanes]
        shape = (what, lanes[0].job.group, len(lanes), rows)
        if shape not in self._shapes_run:
            self._shapes_run.add(shape)
            self._first_calls[shape] = (cost, shares)
            return out
        _, waiting = self._first_calls.pop(shape, (cost, []))
        for lane, share in [*waiting, *shares]:
            _charge(lane, cost, share)
        return out

    def _settle_first_calls(self, lanes: list[Lane]) -> None:
        """Lanes that finish while a first call they were in has had no second: charged that call's own time."""
        done = set(map(id, lanes))
        for shape, (cost, shares) in list(self._first_calls.items()):
            for lane, share in shares:
                if id(lane) in done:
                    _charge(lane, cost, share)
            left = [(lane, share) for lane, share in shares if id(lane) not in done]
            if left:
                self._first_calls[shape] = (cost, left)
            else:
                del self._first_calls[shape]

    @torch.no_grad()
    def _start_from_images(self, lanes: list[Lane]) -> None:
        """img2img lanes' first latents: every new input image of the batch through ONE VAE encode,
        then each lane's own sample of it, noised to its first timestep with its own generator."""
        family = lanes[0].job.model.family
        sources = [lane.source for lane in lanes if lane.source is not None]
        new = [source for source in dict.fromkeys(sources) if source.encoded is None]
        if new:
            for source, encoded in zip(new, family.encode_images(torch.cat([s.pixels for s in new])), strict=True):
                source.encoded = encoded
        for lane in lanes:
            assert lane.source is not None and lane.source.encoded is not None
            image = family.image_latents(lane.source.encoded, lane.generator)
            noised = family.noised_image_latents(lane.scheduler, image, lane.timesteps[0], lane.generator)
            lane.latents = family.pack_latents(noised, lane.job.height, lane.job.width)
            lane.awaiting_image = False
            lane.source = None  # its pixels and encoding are no longer needed

    @torch.no_grad()
    def _denoise(self, lanes: list[Lane]) -> None:
        """One denoiser call over the batch. Lanes of a scheduler kind with a batched form are scaled
        and stepped as tensor ops over their rows; the rest step one by one through `step`."""
        job = lanes[0].job
        self._activate(job.model, lanes[0].adapters)  # the group's LoRA set: no reload, base weights untouched
        family = job.model.family
        timesteps = [lane.timesteps[lane.position] for lane in lanes]
        groups: dict[BatchKind | None, list[int]] = {}
        for i, lane in enumerate(lanes):
            groups.setdefault(lane.kind, []).append(i)
        model_inputs: list[torch.Tensor] = [lanes[0].latents] * len(lanes)
        batched: list[tuple[BatchKind, list[int], list[Lane], torch.Tensor, torch.Tensor]] = []
        for kind, rows in groups.items():
            if kind is None:
                for i in rows:
                    model_inputs[i] = family.model_input(lanes[i].scheduler, lanes[i].latents, timesteps[i])
                continue
            group = [lanes[i] for i in rows]
            latents = group[0].latents if len(group) == 1 else torch.cat([lane.latents for lane in group])
            coefs = coefficient_rows([lane.table[lane.position] for lane in group], latents)
            for i, row in zip(rows, kind.model_input(latents, coefs).split(1), strict=True):
                model_inputs[i] = row
            batched.append((kind, rows, group, latents, coefs))
        denoiser, padded_rows = self._denoiser_for(lanes)
        conditionings = [lane.conditioning for lane in lanes]
        predictions = family.predict(denoiser, DenoiserBatch(model_inputs, timesteps, conditionings, padded_rows))
        for kind, rows, group, latents, coefs in batched:
            # Row slices, not a list index: indexing with a list would copy an index tensor to the device.
            prediction = predictions if len(rows) == len(lanes) else torch.cat([predictions[i : i + 1] for i in rows])
            schedulers, generators = [lane.scheduler for lane in group], [lane.generator for lane in group]
            stepped = kind.step(StepBatch(schedulers, generators, prediction, latents, coefs))
            for lane, row in zip(group, stepped.split(1), strict=True):
                lane.latents = row
        filmed: list[tuple[Lane, torch.Tensor, str]] = []
        for i in groups.get(None, ()):
            lane = lanes[i]
            if lane.film is not None:
                x0, source = self._step_filmed(lane, model_inputs[i], predictions[i : i + 1], timesteps[i])
                filmed.append((lane, x0, source))
                continue
            if lane.auto is not None:
                lane.x0, _ = self._step_filmed(lane, model_inputs[i], predictions[i : i + 1], timesteps[i])
                continue
            lane.latents = lane.scheduler.step(
                predictions[i : i + 1], timesteps[i], lane.latents, return_dict=False, **lane.step_kwargs
            )[0]
        for lane in lanes:
            lane.position += 1
        for lane, x0, source in filmed:
            self._capture_frame(lane, x0, source)

    # -- steps: auto: stop a lane once its predicted clean image has settled ----------------------

    @torch.no_grad()
    def _check_settled(self, lanes: list[Lane]) -> None:
        """Auto lanes at a check: their x0 decoded in one VAE call and measured against their last check's.
        A lane that has settled stops here, its place in the batch freed: its image is that x0 (for a
        deterministic scheduler, a jump from here to sigma 0 lands on x0 itself), its steps the ones that ran."""
        job = lanes[0].job
        x0s = torch.cat([lane.x0 for lane in lanes if lane.x0 is not None])
        pictures = self.decode(x0s, job.model, job.height, job.width)
        for lane, pixels in zip(lanes, pictures, strict=True):
            assert lane.auto is not None and lane.x0 is not None
            step = lane.progress_steps
            if not lane.auto.observe(step, Image.fromarray(pixels)):
                continue
            lane.stopped_sigma = noise_level(lane.scheduler, lane.timesteps[lane.position - 1])
            lane.latents, lane.settled_pixels = lane.x0, pixels
            lane.ran, lane.timesteps = step, lane.timesteps[: lane.position]

    # -- the Steps film: x0 of every step, for film lanes only ------------------------------------

    @staticmethod
    def _step_filmed(
        lane: Lane, model_input: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, str]:
        """Step a film lane through its scheduler's own `step`; returns this step's x0 and its source."""
        output = lane.scheduler.step(prediction, t, lane.latents, return_dict=True, **lane.step_kwargs)
        lane.latents = output.prev_sample
        return predicted_clean(lane.scheduler, model_input, prediction, t, output)

    def _capture_frame(self, lane: Lane, x0: torch.Tensor, source: str) -> None:
        """Keep x0 under the step it belongs to; decode final ones a batch at a time."""
        film = lane.film
        assert film is not None
        film.record(lane.progress_steps, x0, source)
        ready = film.ready(lane.progress_steps, lane.done)
        if len(ready) < FILM_DECODE_BATCH and not (lane.done and ready):
            return
        job = lane.job
        # Charged to the lane like its denoising: CUDA events on a GPU (no double count of the batch
        # still running when the decode is queued), wall time on a CPU.
        started = time.perf_counter()
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self._cuda else None
        if events:
            events[0].record()
        for first in range(0, len(ready), FILM_DECODE_BATCH):
            steps = ready[first : first + FILM_DECODE_BATCH]
            latents = torch.cat([film.pending.pop(step) for step in steps])
            decoded = self.decode(latents, job.model, job.height, job.width)
            for step, pixels, verdict in zip(steps, decoded, self.verdicts(decoded), strict=True):
                film.frames[step] = to_frame(pixels)
                if verdict is not None:
                    film.verdicts[step] = verdict
        if events:
            events[1].record()
            lane.gpu_spans.append((events[0], events[1], 1.0))
        else:
            lane.cpu_seconds += time.perf_counter() - started

    def _denoiser_for(self, lanes: list[Lane]) -> tuple[Any, int]:
        """The denoiser to call for this batch and how many rows (lanes plus padding) to give it."""
        job = lanes[0].job
        compiled = self._compiled_unet is not None and lanes[0].group == self._compiled_group
        if compiled and job.model.family.supports_padding([lane.conditioning for lane in lanes]):
            for bucket in self.batch_buckets:
                if bucket >= len(lanes):
                    return self._compiled_unet, bucket
        return job.model.family.denoiser, len(lanes)

    def compile_unet(
        self,
        height: int = 512,
        width: int = 512,
        compiler: Callable[[Any], Any] = CUDA_GRAPH_COMPILER,
    ) -> float:
        """torch.compile the default model's denoiser with CUDA graphs for one image size and a few
        static batch sizes.

        Every bucket is compiled now, during warm-up, so no user waits for a compile; batches are
        padded up to their bucket. Other sizes and models run eagerly. Returns the seconds it took.
        """
        started = time.perf_counter()
        torch._dynamo.config.automatic_dynamic_shapes = False  # a dynamic UNet compile takes "forever"
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(self.batch_buckets))
        model = self.model
        family = model.family
        self._compiled_unet = compiler(family.denoiser)
        self._compiled_group = (model.name, (), height, width)  # lanes without LoRAs only
        conditioning = family.encode("", "", 7.5, height, width)
        scheduler = family.new_scheduler("Euler", 2, 0, height, width)
        generator = torch.Generator("cpu").manual_seed(0)
        with torch.no_grad():
            for bucket in self.batch_buckets:
                latents = [family.initial_latents(scheduler, height, width, generator) for _ in range(bucket)]
                timesteps = [scheduler.timesteps[0]] * bucket
                for _ in range(3):  # compile, record the CUDA graph, replay it
                    family.predict(
                        self._compiled_unet, DenoiserBatch(latents, timesteps, [conditioning] * bucket, bucket)
                    )
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
        return time.perf_counter() - started

    def _report_progress(self, lanes: list[Lane], jobs: list[EngineJob]) -> None:
        """One progress event per job per iteration, with the steps of every lane it advanced, and
        one message for all of them when several jobs advanced. Previews are made on an encoder
        thread: a job's first progress event waits for its first preview and is sent from there
        (so the user's first progress shows one, as before); later ones ride on the next event."""
        now = time.perf_counter()
        rate = self.rates.rate((lanes[0].job.model.name, lanes[0].job.width, lanes[0].job.height, len(lanes)))
        advanced: dict[EngineJob, list[tuple[int, int]]] = {job: [] for job in jobs}
        for lane in lanes:
            advanced[lane.job].append((lane.index, lane.progress_steps))
        events = []
        for job, lane_steps in advanced.items():
            preview = job.preview_png  # taken before a new preview is asked for, so none is overwritten
            if preview is not None:
                job.preview_png = None
            if self.previews and not job.previewing and now - job.last_preview_at >= PREVIEW_INTERVAL_S:
                job.last_preview_at = now
                job.previewing = True
                latents = max(job.lanes, key=lambda lane: lane.position).latents
                future = self._encoder.submit(
                    self._make_preview, job, latents, (job.height, job.width), lane_steps, rate
                )
                self._encodes.add(future)
                future.add_done_callback(self._encodes.discard)
            if job.previewing and not job.progress_sent:
                continue  # its first event goes out with its first preview
            job.progress_sent = True
            events.append(self._progress_event(job, lane_steps, preview, rate))
        if events:
            self.emit(events[0] if len(events) == 1 else ProgressBatch(tuple(events)))

    @staticmethod
    def _progress_event(
        job: EngineJob, lane_steps: list[tuple[int, int]], preview: bytes | None, rate: StepRate | None
    ) -> JobProgress:
        (index, step), total = lane_steps[0], job.all_lanes[lane_steps[0][0]].ran
        verdict = job.preview_verdict if preview is not None else None
        return JobProgress(job.job_id, index, step, total, job.steps_done, job.steps_total, preview,
                           lane_steps=tuple(lane_steps), preview_verdict=verdict, rate=rate)  # fmt: skip

    def _make_preview(
        self,
        job: EngineJob,
        latents: torch.Tensor,
        size: tuple[int, int],
        lane_steps: list[tuple[int, int]],
        rate: StepRate | None = None,
    ) -> None:
        """Encoder thread: the cheap latent preview (its device-to-host copy waits here, not in the loop)."""
        png = None
        try:
            preview = latent_preview_png(job.model.family.preview_latents(latents, *size))  # the size they ran at
            job.preview_verdict = self.verdicts([png_pixels(preview)])[0]
            png = preview  # only once checked: a preview the checker failed on is not sent
        except Exception:
            log.exception("could not make a preview of job %s", job.job_id, extra={"job_id": job.job_id})
        if not job.progress_sent:
            job.progress_sent = True
            self.emit(self._progress_event(job, lane_steps, png, rate))
        else:
            job.preview_png = png
        job.previewing = False

    @torch.no_grad()
    def _finish(self, lanes: list[Lane]) -> None:
        job = lanes[0].job  # one batch: one model and size
        height, width = job.height, job.width
        # Checked where decoded, in one batch with the lanes it checks: its cost is theirs.
        images, verdicts = self._timed(
            lanes, lambda done: self._decode_checked(done, job.model, height, width), "decode"
        )
        self._settle_first_calls(lanes)  # before their seconds are read
        for lane, pixels, verdict in zip(lanes, images, verdicts, strict=True):
            job = lane.job
            if job.hires_pending:
                job.lanes.remove(lane)
                lane.latents = torch.empty(0)
                lane.decoded = pixels
                if not job.lanes:  # the first pass is done: the job moves on to its hires pass
                    decoded = [Image.fromarray(first.decoded) for first in job.all_lanes if first.decoded is not None]
                    self._start_hires(job, decoded)
                continue
            with self._lock:
                job.lanes.remove(lane)
                job.pending_encodes += 1
                if not job.lanes:
                    self._jobs.pop(job.job_id, None)
                    if not job.answered:
                        self._encoding[job.job_id] = job
            future = self._encoder.submit(self._encode, job, lane, pixels, verdict)
            self._encodes.add(future)
            future.add_done_callback(self._encodes.discard)

    def decode(self, latents: torch.Tensor, model: LoadedModel, height: int, width: int) -> np.ndarray:
        """VAE-decode a batch of latents of one model and size to uint8 HxWx3 arrays."""
        return model.family.decode(latents, height, width)

    def verdicts(self, pictures: Sequence[np.ndarray] | np.ndarray) -> list[SafetyVerdict | None]:
        """The checker's verdict on each decoded picture, in one batch on the models' device (None: no checker)."""
        if self.checker is None:
            return [None] * len(pictures)
        return list(self.checker.check(pictures))

    def _decode_checked(
        self, lanes: list[Lane], model: LoadedModel, height: int, width: int
    ) -> tuple[np.ndarray, list[SafetyVerdict | None]]:
        fresh = [lane for lane in lanes if lane.settled_pixels is None]  # a settled auto lane's image is decoded
        decoded = iter(self.decode(torch.cat([lane.latents for lane in fresh]), model, height, width) if fresh else ())
        pixels = np.stack([next(decoded) if lane.settled_pixels is None else lane.settled_pixels for lane in lanes])
        return pixels, self.verdicts(pixels)

    def _encode(self, job: EngineJob, lane: Lane, pixels: np.ndarray, verdict: SafetyVerdict | None = None) -> None:
        """Encoder thread: PNG-encode one image (with its A1111 parameters) and its film's frames;
        the last image of a job emits its result."""
        request = job.request
        film = lane.film
        first = job.first_pass[lane.index] if job.first_pass else None
        parameters = image_infotext(
            lane_request(request, lane.index),
            seed=lane.seed,
            steps=lane.ran if lane.auto else lane.steps if first is None or not first.timesteps else first.steps,
            model=job.model.name,
            scheduler=request.lane_schedulers[lane.index],
            lora_hashes=job.model.adapters.hashes if job.model.adapters is not None else None,
            strength=lane.strength if lane.from_image else None,
            **_guidance_fields(job, lane),
            **_auto_fields(lane),
        )
        try:
            png = encode_png(Image.fromarray(pixels), parameters=parameters)
            frames = tuple(encode_png(frame) for _, frame in sorted(film.frames.items())) if film else ()
            seconds = lane.seconds + (
                first.seconds if first else 0.0
            )  # off the denoising thread: reading CUDA events waits
        except Exception:
            log.exception("could not encode an image of job %s", job.job_id, extra={"job_id": job.job_id})
            self._fail(job, INTERNAL_ERROR_MESSAGE.format(ref=job.job_id[:8]))
            return
        frame_verdicts = tuple(v for _, v in sorted(film.verdicts.items())) if film else ()
        frame_sigmas = step_noise_levels(lane.scheduler, lane.timesteps, lane.ran) if film else ()
        image = GeneratedImage(
            png, lane.seed, lane.steps, job.width, job.height, seconds, frames=frames,
            frames_source=film.source if film else "", verdict=verdict, frame_verdicts=frame_verdicts,
            frame_sigmas=frame_sigmas,
            steps_ran=lane.ran if lane.from_image or lane.auto else None,
            first_pass_steps=first.ran if first else 0,
            strength=lane.strength,
            auto_settled=None if lane.auto is None else lane.settled_pixels is not None,
            stopped_sigma=lane.stopped_sigma,
        )  # fmt: skip
        with self._lock:
            job.images[lane.index] = image
            job.pending_encodes -= 1
            if job.pending_encodes or job.lanes:
                return
        if not self._claim_answer(job):
            return  # cancelled or failed meanwhile
        self.emit(
            JobResult(
                job.job_id,
                images=tuple(image for _, image in sorted(job.images.items())),
                gpu_seconds=job.gpu_seconds,
                prompt_truncated=job.conditioning.truncated,
                is_test_model=job.model.is_test_model,
                model=job.model.name,
            )
        )

    def run_until_idle(self) -> None:
        """Step until every lane is done and every image is encoded (benchmarks and tests)."""
        while not self.idle:
            self.step()
        self.wait_encodes()

    def wait_encodes(self) -> None:
        for future in list(self._encodes):
            future.result()

    def close(self) -> None:
        if self._owns_encoder:
            self._encoder.shutdown(wait=True)
