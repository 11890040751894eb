"""The only module that imports diffusers: model loading, schedulers and the batched lane engine.

Every denoising run is a *lane* (its own scheduler instance, latents and seeded generator). Each
engine iteration stacks the active lanes of one size into ONE UNet call with per-sample timesteps,
then steps each lane with its own scheduler. Lanes join and leave between iterations.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from inference.imaging import encode_png, latent_preview_png
from inference.protocol import (
    INTERNAL_ERROR_MESSAGE,
    OUT_OF_MEMORY_MESSAGE,
    SCHEDULER_NAMES,
    GeneratedImage,
    JobEvent,
    JobFailed,
    JobProgress,
    JobResult,
    Request,
    WorkerConfig,
)

log = logging.getLogger(__name__)

# diffusers attaches pipeline components and scheduler methods dynamically, so type checkers
# can't see them: these aliases name what is meant without pretending to check it.
Pipeline = Any  # a StableDiffusionPipeline
Scheduler = Any  # a SchedulerMixin subclass

TEST_MODELS = ("tiny", "sd15-arch")
TEST_MODEL_REVISION = 3  # bump when a test model's config changes, so stale caches are rebuilt
PREVIEW_INTERVAL_S = 1.5
# Batch sizes (in lanes) a compiled UNet is specialised for; a batch is padded up to the next one.
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
CUDA_GRAPH_COMPILER = partial(torch.compile, mode="reduce-overhead", fullgraph=True)

# A1111 name -> (diffusers scheduler class, from_config overrides).
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
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "protocol.SCHEDULER_NAMES and SCHEDULERS must agree"


def make_scheduler(base_config: Any, name: str, seed: int) -> Scheduler:
    """A fresh scheduler for one lane; the pipeline's own scheduler is never touched."""
    cls, overrides = SCHEDULERS[name]
    if cls is DPMSolverSDEScheduler:
        # Its Brownian-tree noise is seeded per instance, so each lane stays reproducible.
        overrides = {**overrides, "noise_sampler_seed": seed}
    scheduler: Scheduler = cls.from_config(base_config, **overrides)
    return scheduler


@cache
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


# --- devices and loading ---------------------------------------------------------------------


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when present, else CPU fp32; either can be overridden."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(['auto', *dtypes])}; got {dtype!r}.")
    return dev, dtypes[dtype]


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP-style vocabulary of single bytes, written locally so no tokenizer download is needed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in chars:
            vocab[char + suffix] = len(vocab)
    return vocab


def _random_weight_components(architecture: str) -> dict[str, Any]:
    """Configs for the built-in random-weight test models: "tiny" (fast on CPU) or "sd15-arch"."""
    torch.manual_seed(0)
    if architecture == "tiny":
        # Small enough that per-call overhead dominates, as it does for SD1.5 on a GPU at small batch.
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(4, 8, 8, 8),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=256,
            mid_block_add_attention=False,
        )
        text_config = CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
            num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77,
        )  # fmt: skip
    elif architecture == "sd15-arch":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_config = CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=3072,
            num_attention_heads=12, num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
            projection_dim=768, hidden_act="quick_gelu",
        )  # fmt: skip
    else:
        raise ValueError(f"unknown test architecture {architecture!r}")
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )  # fmt: skip
    tokenizer = CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(text_config),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "stepgrid"


def ensure_test_model(architecture: str, cache_dir: Path) -> Path:
    """Build a random-weight test model once and save it with `save_pretrained`."""
    folder = cache_dir / f"{architecture}-random-weights-v{TEST_MODEL_REVISION}"
    if (folder / "model_index.json").exists():
        return folder
    log.info("building the random-weight test model %r in %s (not a real model)", architecture, folder)
    pipe: Pipeline = StableDiffusionPipeline(**_random_weight_components(architecture))
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp)
    (tmp / "STEPGRID_TEST_MODEL.json").write_text(json.dumps({"random_weights": True}))
    tmp.replace(folder)
    return folder


def _first_sentence(text: str, limit: int = 200) -> str:
    """diffusers' loading errors run to paragraphs; the first sentence says what went wrong."""
    first = text.strip().split("\n")[0]
    first = re.sub(r"^Cannot load model [^:]+: ", "", first)  # diffusers repeats the model id
    for end in (". ", " ("):
        if end in first:
            first = first[: first.index(end)]
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass
class LoadedModel:
    pipe: Pipeline
    name: str
    device: torch.device
    dtype: torch.dtype
    is_test_model: bool
    load_seconds: float


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is safe to show an operator."""


def load_model(config: WorkerConfig) -> LoadedModel:
    """Load the configured model through `from_pretrained` (hub id, local folder or a test model)."""
    started = time.perf_counter()
    device, dtype = resolve_device(config.device, config.dtype)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    is_test_model = config.model in TEST_MODELS
    source = str(ensure_test_model(config.model, cache_dir)) if is_test_model else config.model
    try:
        pipe: Pipeline = DiffusionPipeline.from_pretrained(
            source,
            dtype=dtype,
            cache_dir=str(cache_dir / "hub") if not is_test_model else None,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        reason = _first_sentence(str(exc)).removesuffix(".") or type(exc).__name__
        raise ModelLoadError(
            f"Could not load model {config.model!r} ({reason}). Give a local diffusers folder, a hub id "
            "that can be downloaded, or 'tiny' for the random-weight test model (--model, or STEPGRID_MODEL "
            "for the bot)."
        ) from exc
    if type(pipe).__name__ != StableDiffusionPipeline.__name__:
        raise ModelLoadError(
            f"Model {config.model!r} is a {type(pipe).__name__}; Stepgrid runs Stable Diffusion 1.x/2.x models."
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    return LoadedModel(pipe, config.model, device, dtype, is_test_model, time.perf_counter() - started)


# --- conditioning ------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """Text conditioning of one job, row 0 unconditional, row 1 conditional.

    `added` holds extra UNet conditioning (SDXL's pooled text embeddings and time ids would go
    there, each with the same two rows), so the batching code needs no change for it.
    """

    embeds: torch.Tensor
    guidance: torch.Tensor  # shape (1, 1, 1, 1) on the device, so a batch needs no host copy
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    truncated: bool = False


@torch.no_grad()
def encode_conditioning(pipe: Pipeline, prompt: str, negative_prompt: str, guidance: float = 7.5) -> Conditioning:
    """Encode prompt and negative prompt; over-long prompts are cut to the tokenizer's limit."""
    tokenizer = pipe.tokenizer
    limit = tokenizer.model_max_length
    truncated = len(tokenizer(prompt, truncation=False).input_ids) > limit
    cond, uncond = pipe.encode_prompt(
        prompt,
        device=pipe.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative_prompt or None,
    )
    embeds = torch.cat([uncond, cond])
    guidance_tensor = torch.full((1, 1, 1, 1), guidance, device=embeds.device, dtype=torch.float32)
    return Conditioning(embeds=embeds, guidance=guidance_tensor, truncated=truncated)


# --- lanes and the engine ----------------------------------------------------------------------


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
    position: int = 0
    started_at: float | None = None

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
        return min(self.steps, math.floor(self.position * self.steps / len(self.timesteps) + 1e-9))


@dataclass(eq=False)
class EngineJob:
    job_id: str
    request: Request
    conditioning: Conditioning
    order: int
    all_lanes: list[Lane] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)  # still denoising
    images: dict[int, GeneratedImage] = field(default_factory=dict)
    pending_encodes: int = 0
    cpu_seconds: float = 0.0
    gpu_spans: list[tuple[Any, Any, float]] = field(default_factory=list)  # CUDA events, share of the batch
    last_preview_at: float = 0.0
    answered: bool = False  # a result, failure or cancellation has been emitted (guarded by the engine's lock)

    @property
    def group(self) -> tuple[int, int]:
        return (self.request.height, self.request.width)

    @property
    def steps_done(self) -> int:
        return sum(lane.progress_steps for lane in self.all_lanes)

    @property
    def steps_total(self) -> int:
        return sum(lane.steps for lane in self.all_lanes)

    def due_lanes(self) -> list[Lane]:
        """Lanes that should run now, longest first. A lane starts once the job's longest started lane
        has as many UNet calls left as it needs, so all of a job's cells finish together."""
        started = [lane for lane in self.lanes if lane.position > 0]
        clock = max(lane.remaining for lane in started or self.lanes)
        due = [lane for lane in self.lanes if lane.position > 0 or lane.remaining >= clock]
        return sorted(due, key=lambda lane: -lane.remaining)

    @property
    def gpu_seconds(self) -> float:
        """Device time of this job's share of each batch; reading CUDA events waits for them."""
        total = self.cpu_seconds
        for start, end, share in self.gpu_spans:
            end.synchronize()
            total += start.elapsed_time(end) / 1000 * share
        return total


class BatchError(RuntimeError):
    """An engine iteration failed; its jobs were answered with a failure and removed."""

    def __init__(self, job_ids: list[str], *, out_of_memory: bool) -> None:
        super().__init__(f"{'out of memory' if out_of_memory else 'error'} in a batch of jobs {job_ids}")
        self.job_ids = job_ids
        self.out_of_memory = out_of_memory


Emit = Callable[[JobEvent], None]


class LaneEngine:
    """Continuous batching of denoising lanes over one loaded pipeline.

    Every job gets exactly one answer through `emit`: its JobResult, or a JobFailed when it is
    cancelled or its batch or image encoding fails.
    """

    def __init__(
        self,
        model: LoadedModel,
        emit: Emit,
        *,
        max_batch_lanes: int = 8,
        encoder: ThreadPoolExecutor | None = None,
        previews: bool = True,
    ) -> None:
        self.model = model
        self.pipe = model.pipe
        self.emit = emit
        self.max_batch_lanes = max_batch_lanes
        self.previews = previews
        self.batch_buckets = tuple(sorted({*(b for b in BATCH_BUCKETS if b < max_batch_lanes), max_batch_lanes}))
        self._compiled_unet: Any = None
        self._compiled_group: tuple[int, int] | None = None
        self._encoder = encoder or ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
        self._owns_encoder = encoder is None
        self._jobs: dict[str, EngineJob] = {}  # jobs with lanes still denoising
        self._encoding: dict[str, EngineJob] = {}  # jobs whose images are being encoded
        self._order = itertools.count()
        self._group_turn = 0
        self._encodes: set[Future[None]] = set()
        self._lock = threading.Lock()  # guards job bookkeeping shared with the encoder threads
        self._vae_scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self._cuda = model.device.type == "cuda"

    # -- admission ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No lane is denoising (images may still be encoding)."""
        return not self._jobs

    @torch.no_grad()
    def add_job(self, job_id: str, request: Request) -> None:
        """Turn a validated request into lanes; they start at the next iteration."""
        conditioning = encode_conditioning(self.pipe, request.prompt, request.negative_prompt, request.guidance)
        job = EngineJob(job_id, request, conditioning, next(self._order))
        job.all_lanes = [self._make_lane(job, i, steps, seed) for i, (steps, seed) in enumerate(
            zip(request.lane_steps, request.lane_seeds, strict=True))]  # fmt: skip
        job.lanes = list(job.all_lanes)
        self._jobs[job_id] = job

    def _make_lane(self, job: EngineJob, index: int, steps: int, seed: int) -> Lane:
        request, device = job.request, self.model.device
        scheduler = make_scheduler(self.pipe.scheduler.config, request.scheduler, seed)
        scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator("cpu").manual_seed(seed)
        scale = self._vae_scale
        shape = (1, self.pipe.unet.config.in_channels, request.height // scale, request.width // scale)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.model.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs: dict[str, Any] = {}
        if _accepts(type(scheduler).step, "generator"):
            step_kwargs["generator"] = generator
        return Lane(
            job=job,
            index=index,
            steps=steps,
            seed=seed,
            scheduler=scheduler,
            timesteps=list(scheduler.timesteps),
            latents=latents,
            generator=generator,
            step_kwargs=step_kwargs,
        )

    def cancel(self, job_id: str) -> bool:
        """Stop a job, even one whose images are being encoded; it is answered as cancelled."""
        job = self._jobs.pop(job_id, None) or self._encoding.get(job_id)
        if job is None or not self._claim_answer(job):
            return False
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
        """The due lanes of one size group (groups take turns), oldest job first, up to the cap."""
        groups: dict[tuple[int, int], list[EngineJob]] = {}
        for job in sorted(self._jobs.values(), key=lambda j: j.order):
            groups.setdefault(job.group, []).append(job)
        if not groups:
            return []
        keys = sorted(groups)
        key = keys[self._group_turn % len(keys)]
        self._group_turn += 1
        return [lane for job in groups[key] for lane in job.due_lanes()][: self.max_batch_lanes]

    def step(self) -> int:
        """Run one UNet call over a batch of lanes and advance them; returns the lanes run."""
        lanes = self._next_batch()
        if not lanes:
            return 0
        jobs = list({lane.job: None for lane in lanes})
        try:
            self._timed_denoise(lanes, jobs)
            self._report_progress(lanes, jobs)
            finished = [lane for lane in lanes if lane.done]
            if finished:
                self._finish(finished)
        except Exception as exc:
            out_of_memory = isinstance(exc, torch.cuda.OutOfMemoryError)
            if out_of_memory:
                torch.cuda.empty_cache()
            for job in jobs:
                if out_of_memory:
                    self._fail(job, OUT_OF_MEMORY_MESSAGE, retryable=True)
                else:
                    self._fail(job, INTERNAL_ERROR_MESSAGE.format(ref=job.job_id[:8]))
            raise BatchError([job.job_id for job in jobs], out_of_memory=out_of_memory) from exc
        return len(lanes)

    def _timed_denoise(self, lanes: list[Lane], jobs: list[EngineJob]) -> None:
        """Denoise and charge each job its share of the batch's time (CUDA events: no host sync)."""
        shares = {job: sum(lane.job is job for lane in lanes) / len(lanes) for job in jobs}
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._denoise(lanes)
            end.record()
            for job, share in shares.items():
                job.gpu_spans.append((start, end, share))
        else:
            started = time.perf_counter()
            self._denoise(lanes)
            elapsed = time.perf_counter() - started
            for job, share in shares.items():
                job.cpu_seconds += elapsed * share

    @torch.no_grad()
    def _denoise(self, lanes: list[Lane]) -> None:
        now = time.perf_counter()
        timesteps, model_inputs = [], []
        for lane in lanes:
            if lane.started_at is None:
                lane.started_at = now
            t = lane.timesteps[lane.position]
            timesteps.append(t)
            model_inputs.append(lane.scheduler.scale_model_input(lane.latents, t))
        unet, rows = self._unet_for(lanes)
        pad = rows - len(lanes)

        def batch(tensors: list[torch.Tensor]) -> torch.Tensor:
            # Padding repeats the last lane so that a compiled UNet only ever sees its bucket shapes.
            return torch.cat(tensors + tensors[-1:] * pad)

        x = batch(model_inputs)
        t_batch = batch([t.to(torch.float32).reshape(1) for t in timesteps])
        conditionings = [lane.job.conditioning for lane in lanes]

        def halves(rows_of: Callable[[Conditioning], torch.Tensor]) -> torch.Tensor:
            """Unconditional rows of every lane, then conditional rows, as classifier-free guidance wants."""
            return torch.cat([batch([rows_of(c)[0:1] for c in conditionings]),
                              batch([rows_of(c)[1:2] for c in conditionings])])  # fmt: skip

        embeds = halves(lambda c: c.embeds)
        added = {key: halves(lambda c, key=key: c.added[key]) for key in conditionings[0].added}  # type: ignore[misc]
        noise = unet(
            torch.cat([x, x]),
            torch.cat([t_batch, t_batch]),
            encoder_hidden_states=embeds,
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]
        uncond, cond = noise[: len(lanes)], noise[rows : rows + len(lanes)]
        guidance = torch.cat([c.guidance for c in conditionings]).to(noise.dtype)
        guided = uncond + guidance * (cond - uncond)
        for i, lane in enumerate(lanes):
            lane.latents = lane.scheduler.step(
                guided[i : i + 1], timesteps[i], lane.latents, return_dict=False, **lane.step_kwargs
            )[0]
            lane.position += 1

    def _unet_for(self, lanes: list[Lane]) -> tuple[Any, int]:
        """The UNet to call for this batch and how many rows (lanes plus padding) to give it."""
        if self._compiled_unet is not None and lanes[0].job.group == self._compiled_group:
            for bucket in self.batch_buckets:
                if bucket >= len(lanes):
                    return self._compiled_unet, bucket
        return self.pipe.unet, len(lanes)

    def compile_unet(
        self,
        height: int = 512,
        width: int = 512,
        compiler: Callable[[Any], Any] = CUDA_GRAPH_COMPILER,
    ) -> float:
        """torch.compile the UNet with CUDA graphs for one image size and a few static batch sizes.

        Every bucket is compiled now, during warm-up, so no user waits for a compile; batches are
        padded up to their bucket. Other sizes run eagerly. Returns the seconds it took.
        """
        started = time.perf_counter()
        torch._dynamo.config.automatic_dynamic_shapes = False  # a dynamic UNet compile takes "forever"
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(self.batch_buckets))
        self._compiled_unet = compiler(self.pipe.unet)
        self._compiled_group = (height, width)
        device, dtype = self.model.device, self.model.dtype
        embeds = encode_conditioning(self.pipe, "", "").embeds
        latent_shape = (self.pipe.unet.config.in_channels, height // self._vae_scale, width // self._vae_scale)
        with torch.no_grad():
            for bucket in self.batch_buckets:
                x = torch.randn(2 * bucket, *latent_shape, device=device, dtype=dtype)
                t = torch.full((2 * bucket,), 999.0, device=device)
                e = embeds.repeat_interleave(bucket, dim=0)
                for _ in range(3):  # compile, record the CUDA graph, replay it
                    self._compiled_unet(x, t, encoder_hidden_states=e, added_cond_kwargs=None, return_dict=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return time.perf_counter() - started

    def _report_progress(self, lanes: list[Lane], jobs: list[EngineJob]) -> None:
        now = time.perf_counter()
        for job in jobs:
            job_done, job_total = job.steps_done, job.steps_total
            preview = None
            if self.previews and now - job.last_preview_at >= PREVIEW_INTERVAL_S:
                job.last_preview_at = now
                latents = max(job.lanes, key=lambda lane: lane.position).latents[0]
                preview = latent_preview_png(latents.float().cpu().numpy())
            for lane in lanes:
                if lane.job is job:
                    self.emit(JobProgress(job.job_id, lane.index, lane.progress_steps, lane.steps,
                                          job_done, job_total, preview))  # fmt: skip
                    preview = None

    @torch.no_grad()
    def _finish(self, lanes: list[Lane]) -> None:
        images = self.decode(torch.cat([lane.latents for lane in lanes]))
        now = time.perf_counter()
        for lane, pixels in zip(lanes, images, strict=True):
            job = lane.job
            with self._lock:
                job.lanes.remove(lane)
                job.pending_encodes += 1
                if not job.lanes:
                    self._jobs.pop(job.job_id, None)
                    if not job.answered:
                        self._encoding[job.job_id] = job
            seconds = now - (lane.started_at or now)
            future = self._encoder.submit(self._encode, job, lane.index, lane.seed, lane.steps, pixels, seconds)
            self._encodes.add(future)
            future.add_done_callback(self._encodes.discard)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode a batch of latents to uint8 HxWx3 arrays."""
        vae = self.pipe.vae
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()

    def _encode(self, job: EngineJob, index: int, seed: int, steps: int, pixels: np.ndarray, seconds: float) -> None:
        """Encoder thread: PNG-encode one image; the last one of a job emits its result."""
        try:
            png = encode_png(Image.fromarray(pixels))
        except Exception:
            log.exception("could not encode an image of job %s", job.job_id)
            self._fail(job, INTERNAL_ERROR_MESSAGE.format(ref=job.job_id[:8]))
            return
        request = job.request
        with self._lock:
            job.images[index] = GeneratedImage(png, seed, steps, request.width, request.height, seconds)
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
                is_test_model=self.model.is_test_model,
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
