"""Plain wire types that cross the process boundary between the bot and a GPU worker: the worker's config,
the bot's messages to it, and the events (progress, results, failures) that come back.

Stdlib only: the bot imports this module without torch. The requests are `inference.requests`, what a loaded
model can do `inference.model_info`, their validation `inference.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.model_info import ModelInfo, ModelUnavailable
from inference.registry import ModelSpec, models_from_setting
from inference.requests import Request

OUT_OF_MEMORY_MESSAGE = "The GPU ran out of memory for this request; try a smaller size or fewer images."
INTERNAL_ERROR_MESSAGE = "The GPU worker hit an internal error on this request (ref {ref})."
CANCELLED_MESSAGE = "Cancelled."
# How a worker whose image checker failed to load starts its WorkerFailed message (inference.safety).
SAFETY_CHECKER_FAILED = "The image safety checker"
# The image classifier STEPGRID_SAFETY_CHECKER=auto loads (inference.safety; its licence in docs/safety.md).
DEFAULT_SAFETY_CLASSIFIER = "Falconsai/nsfw_image_detection"


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to load its pipelines; picklable for the spawn context.

    `model` is the one-model shorthand (a hub id, folder, test model, registry file or registry
    TOML text); `models` the parsed registry. Give either: the other is filled in.
    """

    model: str = ""
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto", "float32", "float16", "bfloat16"
    max_batch_lanes: int = 8
    cache_dir: str | None = None
    compile: bool = False
    warmup: bool = True
    models: tuple[ModelSpec, ...] = field(default=())
    # The image checker (inference.safety): "auto", "none", "diffusers[:SOURCE]" or an image
    # classifier's hub id or folder; a picture scoring at least `safety_threshold` is flagged.
    safety_checker: str = "none"
    safety_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.models:
            object.__setattr__(self, "models", models_from_setting(self.model))
        if not self.model:
            object.__setattr__(self, "model", self.models[0].name)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models)


# --- messages bot -> worker -----------------------------------------------------------------


@dataclass(frozen=True)
class SubmitJob:
    job_id: str
    request: Request


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# --- events worker -> bot (and queue -> caller) ---------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    """The pipelines are loaded and warmed up: `models` (first = default) and those that failed."""

    models: tuple[ModelInfo, ...]
    device: str
    dtype: str
    load_seconds: float
    unavailable: tuple[ModelUnavailable, ...] = ()
    safety_checker: str = "none"  # the checker every picture went through ("none": unchecked)

    @property
    def model(self) -> str:
        """The default model's name."""
        return self.models[0].name

    @property
    def is_test_model(self) -> bool:
        return self.models[0].is_test_model


@dataclass(frozen=True)
class WorkerFailed:
    """The worker cannot serve at all (model failed to load); restarting won't help."""

    message: str


@dataclass(frozen=True)
class JobQueued:
    job_id: str
    position: int  # 1 = next to run


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    attempt: int


@dataclass(frozen=True)
class SafetyVerdict:
    """What the worker's image checker said of one picture; the bot decides from it what to post."""

    flagged: bool
    score: float  # the checker's unsafe score, 0 to 1
    checker: str  # which checker said so


@dataclass(frozen=True)
class StepRate:
    """What one engine iteration (one denoiser call and its lanes' scheduler steps) takes, as the worker
    measured it while serving: the mean wall time of its latest iterations of `lanes` lanes of one
    model and size on one device. The bot's ETAs are sums of these."""

    model: str
    width: int
    height: int
    lanes: int
    seconds: float
    device: str


@dataclass(frozen=True)
class JobProgress:
    """One denoising iteration of a job: at most one event per job per engine iteration.

    `lane`, `step` and `total` are the first lane the iteration advanced (`step` counts its scheduler
    steps done); `lane_steps` holds (lane, step) for every lane of the job it advanced."""

    job_id: str
    lane: int
    step: int
    total: int
    job_step: int  # steps done over all lanes of the job
    job_total: int
    preview_png: bytes | None = None
    lane_steps: tuple[tuple[int, int], ...] = ()
    preview_verdict: SafetyVerdict | None = None  # None: no preview, or no checker
    rate: StepRate | None = None  # the iteration's measured rate (None: its shape not measured yet)


@dataclass(frozen=True)
class ProgressBatch:
    """The progress of every job one engine iteration advanced, as one message over the pipe (the
    queue hands each job its own JobProgress)."""

    events: tuple[JobProgress, ...]


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    seed: int
    steps: int
    width: int
    height: int
    seconds: float  # its share of every batched call it took part in (denoising and decoding)
    # A film request's predicted clean image (x0) after each step, as PNGs, and where x0 came from:
    # "scheduler" (its own pred_original_sample), else computed from the model's prediction:
    # "epsilon", "v_prediction" or "flow".
    frames: tuple[bytes, ...] = ()
    frames_source: str = ""
    verdict: SafetyVerdict | None = None  # None: no checker ran (STEPGRID_SAFETY_CHECKER=none)
    frame_verdicts: tuple[SafetyVerdict, ...] = ()  # one per frame, when checked

    @property
    def flagged(self) -> bool:
        """The image or any of its film's frames was flagged by the checker."""
        return bool(self.verdict and self.verdict.flagged) or any(v.flagged for v in self.frame_verdicts)

    # img2img: the steps of its `steps`-step schedule that ran over the input image (None: all); `steps: auto`:
    # the steps it ran of at most `steps` before it settled.
    steps_ran: int | None = None
    # `steps: auto` (None: a fixed step count): True when it stopped because its image settled (the image is
    # then the predicted clean image at `stopped_sigma`, the noise level left), False when it ran them all.
    auto_settled: bool | None = None
    stopped_sigma: float = 0.0

    # A hires result: the steps its first pass ran, at the first pass's size (0: none ran).
    first_pass_steps: int = 0
    strength: float = 1.0  # of the pass that made it (its hires pass', for a hires result)
    # A film's noise level (sigma) at each step of its run (frame k is step k) on its scheduler's schedule:
    # what the model was given at the step's first call (sqrt((1 - a) / a), or the flow-matching sigma).
    frame_sigmas: tuple[float, ...] = ()

    @property
    def steps_run(self) -> int:
        """Steps that ran for this image, over every pass."""
        return (self.steps if self.steps_ran is None else self.steps_ran) + self.first_pass_steps


@dataclass(frozen=True)
class JobResult:
    job_id: str
    images: tuple[GeneratedImage, ...]
    gpu_seconds: float
    prompt_truncated: bool = False
    is_test_model: bool = False
    queue_seconds: float = 0.0
    model: str = ""  # the registry name of the model that made the images

    @property
    def steps_run(self) -> int:
        return sum(image.steps_run for image in self.images)


@dataclass(frozen=True)
class JobFailed:
    """The job ended without a result: it failed, or (with `cancelled`) someone cancelled it."""

    job_id: str
    message: str  # safe to show a user
    retryable: bool = False
    cancelled: bool = False  # a cancellation, not an error: build one with `JobFailed.cancellation`
    # What the job used before it stopped, for the ledger and quotas.
    gpu_seconds: float = 0.0
    steps_run: int = 0
    queue_seconds: float = 0.0

    @classmethod
    def cancellation(cls, job_id: str, *, gpu_seconds: float = 0.0, steps_run: int = 0) -> JobFailed:
        """The event that ends a cancelled job, with what it used before it stopped."""
        return cls(job_id, CANCELLED_MESSAGE, cancelled=True, gpu_seconds=gpu_seconds, steps_run=steps_run)


JobEvent = JobQueued | JobStarted | JobProgress | JobResult | JobFailed
TERMINAL_EVENTS = (JobResult, JobFailed)
