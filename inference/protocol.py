"""Plain wire types that cross the process boundary between the bot and a GPU worker.

Stdlib only: the bot imports this module without torch. `validate` lives here too, so the bot
can refuse a bad request before it is queued and the worker can trust what it receives. Parsing
what users type (sizes, step lists, scheduler names) is the bot's (`bot.job_requests`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULER_NAMES: tuple[str, ...] = (
    "Euler",
    "Euler a",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "DDIM",
    "PNDM",
    "LMS",
    "UniPC",
)
DEFAULT_SCHEDULER = "Euler a"
DEFAULT_GUIDANCE = 7.5
DEFAULT_COMPARE_STEPS: tuple[int, ...] = (5, 10, 20, 30, 40, 50)

MIN_STEPS, MAX_STEPS = 1, 150
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 30.0
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 256, 1024, 8
MIN_COUNT, MAX_COUNT = 1, 4
MIN_COMPARE_CELLS, MAX_COMPARE_CELLS = 2, 12
MAX_SEED = 2**32 - 1


OUT_OF_MEMORY_MESSAGE = "The GPU ran out of memory for this request; try a smaller size or fewer images."
INTERNAL_ERROR_MESSAGE = "The GPU worker hit an internal error on this request (ref {ref})."
CANCELLED_MESSAGE = "Cancelled."


class InvalidRequest(ValueError):
    """A request value is out of range; the message names the value and what is allowed."""


@dataclass(frozen=True)
class GenerateRequest:
    """One `/imagine`: `count` images, image i seeded with `seed + i`."""

    prompt: str
    steps: int = 30
    scheduler: str = DEFAULT_SCHEDULER
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    count: int = 1

    @property
    def lane_steps(self) -> tuple[int, ...]:
        """Step count of each denoising lane this request becomes."""
        return (self.steps,) * self.count

    @property
    def lane_seeds(self) -> tuple[int, ...]:
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.count))


@dataclass(frozen=True)
class CompareStepsRequest:
    """One `/compare-steps`: the same prompt and seed rendered once per step count."""

    prompt: str
    steps: tuple[int, ...] = DEFAULT_COMPARE_STEPS
    scheduler: str = DEFAULT_SCHEDULER
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE
    width: int = 512
    height: int = 512
    negative_prompt: str = ""

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return self.steps

    @property
    def lane_seeds(self) -> tuple[int, ...]:
        return (self.seed,) * len(self.steps)


Request = GenerateRequest | CompareStepsRequest


def total_steps(request: Request) -> int:
    """Denoising steps a request costs, summed over every image or grid cell."""
    return sum(request.lane_steps)


def validate(request: Request) -> None:
    """Raise InvalidRequest naming the first bad value and the allowed range."""
    if not request.prompt.strip():
        raise InvalidRequest("The prompt is empty: describe the image you want.")
    if request.scheduler not in SCHEDULER_NAMES:
        raise InvalidRequest(f"Unknown scheduler {request.scheduler!r}; choose one of: {', '.join(SCHEDULER_NAMES)}.")
    if isinstance(request, CompareStepsRequest):
        cells = len(request.steps)
        if not MIN_COMPARE_CELLS <= cells <= MAX_COMPARE_CELLS:
            raise InvalidRequest(
                f"A comparison needs {MIN_COMPARE_CELLS} to {MAX_COMPARE_CELLS} step counts; got {cells}."
            )
        if len(set(request.steps)) != cells:
            raise InvalidRequest("Each step count may appear only once in a comparison.")
    else:
        if not MIN_COUNT <= request.count <= MAX_COUNT:
            raise InvalidRequest(f"count must be {MIN_COUNT} to {MAX_COUNT}; got {request.count}.")
    for steps in request.lane_steps:
        if not MIN_STEPS <= steps <= MAX_STEPS:
            raise InvalidRequest(f"steps must be {MIN_STEPS} to {MAX_STEPS}; got {steps}.")
    if not (math.isfinite(request.guidance) and MIN_GUIDANCE <= request.guidance <= MAX_GUIDANCE):
        raise InvalidRequest(f"guidance must be {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}; got {request.guidance:g}.")
    for name, value in (("width", request.width), ("height", request.height)):
        if not MIN_SIZE <= value <= MAX_SIZE or value % SIZE_MULTIPLE:
            raise InvalidRequest(
                f"{name} must be a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}; got {value}."
            )
    if not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be 0 to {MAX_SEED}; got {request.seed}.")


def parse_step_list(text: str) -> tuple[int, ...]:
    """Parse "5,10,20" into step counts; the error shows the expected form.

    The one user-input parser left here: benchmarks/bench_engine.py reads its step lists with it.
    The bot's parsers are in `bot.job_requests`, which uses this one.
    """
    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    try:
        steps = tuple(int(part) for part in parts)
    except ValueError:
        raise InvalidRequest(
            f"Could not read step counts {text!r}: write whole numbers separated by commas, like 5,10,20,30."
        ) from None
    if not steps:
        raise InvalidRequest("No step counts given: write them like 5,10,20,30.")
    return steps


# --- worker configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to load its pipeline; picklable for the spawn context."""

    model: str
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto", "float32", "float16", "bfloat16"
    max_batch_lanes: int = 8
    cache_dir: str | None = None
    compile: bool = False
    warmup: bool = True


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
    """The pipeline is loaded and warmed up."""

    model: str
    device: str
    dtype: str
    load_seconds: float
    is_test_model: bool


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
class JobProgress:
    """One denoising iteration of one lane. `step` counts the lane's scheduler steps done."""

    job_id: str
    lane: int
    step: int
    total: int
    job_step: int  # steps done over all lanes of the job
    job_total: int
    preview_png: bytes | None = None


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    seed: int
    steps: int
    width: int
    height: int
    seconds: float  # from the lane's first denoising iteration to its decoded image


@dataclass(frozen=True)
class JobResult:
    job_id: str
    images: tuple[GeneratedImage, ...]
    gpu_seconds: float
    prompt_truncated: bool = False
    is_test_model: bool = False
    queue_seconds: float = 0.0

    @property
    def steps_run(self) -> int:
        return sum(image.steps for image in self.images)


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
