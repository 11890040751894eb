"""What leaves the lane engine: progress events with their previews, finished lanes decoded and checked,
their PNGs (with A1111 parameters) and films encoded off the loop, and each job's one answer: its result, or
a failure."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from inference.engine.call_costs import CallCosts
from inference.engine.film import step_noise_levels
from inference.engine.lanes import EngineJob, Lane
from inference.engine.rates import IterationRates
from inference.imaging import encode_png, latent_preview_png, png_pixels
from inference.model_info import GUIDANCE_INPUT
from inference.models.loading import LoadedModel
from inference.parameters import auto_steps_note, image_infotext
from inference.protocol import (
    INTERNAL_ERROR_MESSAGE,
    GeneratedImage,
    JobEvent,
    JobFailed,
    JobProgress,
    JobResult,
    ProgressBatch,
    SafetyVerdict,
    StepRate,
)
from inference.requests import CompareGuidanceRequest, lane_request
from inference.safety import ImageChecker

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 1.5


Emit = Callable[[JobEvent | ProgressBatch], None]


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


class EngineAnswers(CallCosts):
    """What leaves the engine: one progress event per job per iteration (previews made on an encoder thread),
    finished lanes decoded and checked in one batch, PNGs encoded off the loop, and each job's one answer.
    The engine (`LaneEngine`) sets the attributes below."""

    emit: Emit
    previews: bool
    checker: ImageChecker | None
    rates: IterationRates
    _encoder: ThreadPoolExecutor
    _encodes: set[Future[None]]
    _lock: threading.Lock
    _jobs: dict[str, EngineJob]
    _encoding: dict[str, EngineJob]

    def _start_hires(self, job: EngineJob, images: list[Image.Image]) -> None:
        """Move a job on to its hires pass (the engine's admission: `LaneEngine._start_hires`)."""
        raise NotImplementedError

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
