"""The batched lane engine, family-agnostic: it groups lanes by (model, LoRAs, height, width) and steps each.

Every denoising run is a *lane* (its own scheduler instance, latents and seeded generator). Each
engine iteration stacks the active lanes of one group into ONE denoiser call with per-sample
timesteps (the model's family adapter builds that call), then steps each lane with its own
scheduler. Lanes join and leave between iterations; models, LoRA sets and sizes take turns (a LoRA
set is switched between calls with `set_adapters`, never reloaded: inference.models.adapters)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from inference.engine.admission import Admission
from inference.engine.answers import Emit
from inference.engine.batch_steps import BatchKind, StepBatch, coefficient_rows
from inference.engine.call_costs import CallCost, CallShape
from inference.engine.compiled import BATCH_BUCKETS, CompiledDenoiser
from inference.engine.film import FILM_DECODE_BATCH, noise_level, predicted_clean, to_frame
from inference.engine.lanes import EngineJob, Lane
from inference.engine.rates import IterationRates
from inference.families import Conditioning, DenoiserBatch
from inference.models.adapters import AdapterKey
from inference.models.loading import LoadedModel
from inference.protocol import INTERNAL_ERROR_MESSAGE, OUT_OF_MEMORY_MESSAGE
from inference.recent import Recent
from inference.safety import ImageChecker
from inference.schedulers import Scheduler

# Admission runs on the engine thread between two iterations, so every running lane waits for it. It
# reuses what earlier jobs built: schedulers with their timesteps set (DPM2's `set_timesteps` alone
# takes 10–15 ms for 30 steps on a CPU), each lane getting its own copy, and text conditionings
# (read-only once built; a re-roll or a film of the same prompt skips the text encoders). How many of
# each are kept, the least recently used dropped first:
SCHEDULERS_KEPT = 64


CONDITIONINGS_KEPT = 16


class BatchError(RuntimeError):
    """An engine iteration failed; its jobs were answered with a failure and removed."""

    def __init__(self, job_ids: list[str], *, out_of_memory: bool) -> None:
        super().__init__(f"{'out of memory' if out_of_memory else 'error'} in a batch of jobs {job_ids}")
        self.job_ids = job_ids
        self.out_of_memory = out_of_memory


class LaneEngine(Admission, CompiledDenoiser):
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
