"""What a request is: the values it may hold (scheduler names, ranges, defaults), its five types (an
image, and the steps, schedulers, strength and guidance grids), its lanes, and the steps and pixels it costs.

Standard library only: the bot imports this module without torch. Their validation is `inference.validation`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, TypeVar, get_args

from inference import registry

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
    "LCM",  # for LCM-distilled and LCM-LoRA-merged SD/SDXL models (few steps, guidance 1-2)
    "TCD",  # Trajectory Consistency Distillation: TCD-LoRA on SD/SDXL (few steps, guidance 0, eta 0.3)
)
# Consistency schedulers: they fit only step-distilled models (or a step-distillation LoRA); on a
# full-step model they give a blur, so such a model isn't offered them.
FEW_STEP_SCHEDULERS: tuple[str, ...] = ("LCM", "TCD")
# Schedulers that draw fresh noise at every step: more steps means a different image, not a finer one.
ANCESTRAL_SCHEDULERS: tuple[str, ...] = ("Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ SDE")
# What `steps: auto` can't run: the ancestral ones and the consistency ones (they re-noise every step),
# whose predicted clean image never settles.
NEVER_SETTLE: tuple[str, ...] = (*ANCESTRAL_SCHEDULERS, *FEW_STEP_SCHEDULERS)
DEFAULT_SCHEDULER = "Euler a"
DEFAULT_GUIDANCE = 7.5
DEFAULT_COMPARE_STEPS: tuple[int, ...] = (5, 10, 20, 30, 40, 50)
# A small, varied default set of rows for /compare-schedulers: ancestral, multistep with Karras sigmas,
# predictor-corrector and deterministic DDIM; flow-matching models run Euler, Heun and DPM++ 2M.
DEFAULT_GRID_SCHEDULERS: tuple[str, ...] = ("Euler a", "DPM++ 2M Karras", "UniPC", "DDIM")
FLOW_GRID_SCHEDULERS: tuple[str, ...] = ("Euler", "Heun", "DPM++ 2M", "UniPC")

MIN_STEPS, MAX_STEPS = 1, 150
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 30.0
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 256, 2048, 8
MAX_PIXELS = 1536 * 1536  # 1024x1024 and 2048x1024 fit; 2048x2048 does not
MIN_COUNT, MAX_COUNT = 1, 4
MIN_COMPARE_CELLS, MAX_COMPARE_CELLS = 2, 12
# Sweet spot over seeds: /compare-steps draws the ladder once per seed, a row each (1 = the one seed).
# A seed grid has a row per seed and at least two step counts, within the grids' cell cap.
MIN_COMPARE_SEEDS, MAX_COMPARE_SEEDS = 2, MAX_COMPARE_CELLS // 2
MIN_GRID_SCHEDULERS, MAX_GRID_SCHEDULERS = 2, 6
# /compare-strength: the columns (strengths) and rows (step counts) of its grid. The default columns go from
# a light touch (0.3: colours and shapes stay, surfaces change) to little more than the layout (0.9), in even
# steps, so that the column where the picture stops being the input's is easy to see.
DEFAULT_COMPARE_STRENGTHS: tuple[float, ...] = (0.3, 0.45, 0.6, 0.75, 0.9)
MIN_GRID_STRENGTHS, MAX_GRID_STRENGTHS = 2, 6
MAX_GRID_STEP_ROWS = 4
# /compare-guidance: columns (guidance values) and rows (step counts) of its grid.
MIN_GRID_GUIDANCES = 2
MAX_GUIDANCE_ROWS = 6
# Its default columns, the model's own guidance added: classifier-free guidance from off (1) to strong,
# and FLUX-dev's distilled guidance around its 3.5.
DEFAULT_COMPARE_GUIDANCE: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5, 10.0, 15.0)
DISTILLED_COMPARE_GUIDANCE: tuple[float, ...] = (1.5, 2.5, 3.5, 5.0, 7.0, 10.0)
MAX_SEED = 2**32 - 1
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = registry.LORA_WEIGHT_RANGE
MAX_LORAS = 4  # LoRAs one request may stack (the worker keeps more loaded than this)
MIN_STRENGTH, MAX_STRENGTH = 0.0, 1.0
# The input image of an img2img request, as PNG bytes: a 2048x2048 RGB PNG of a photo is ~8 MB.
MAX_INPUT_IMAGE_BYTES = 16 * 1024 * 1024
# Families whose img2img pipelines compute the start of the schedule with a float `init_timestep`.
FLOW_FAMILIES = frozenset({"flux", "sd3"})
assert registry.STEPS_RANGE == (MIN_STEPS, MAX_STEPS) and registry.GUIDANCE_RANGE == (MIN_GUIDANCE, MAX_GUIDANCE)
assert registry.COMPARE_CELLS_RANGE == (MIN_COMPARE_CELLS, MAX_COMPARE_CELLS)


class InvalidRequest(ValueError):
    """A request value is out of range; the message names the value and what is allowed."""


HIRES_UPSCALERS: tuple[str, ...] = ("Lanczos",)  # A1111's name for a Lanczos resize in pixel space
HIRES_SCALE = 2
DEFAULT_HIRES_STRENGTH = 0.5
DEFAULT_STRENGTH = 0.6


@dataclass(frozen=True)
class HiresFix:
    """A second pass inside one job (A1111's "hires fix"): each first-pass image (or the input image)
    is resized `scale` times in pixel space, then run through an img2img pass of its own `steps` at
    `strength`. The request's width and height are the first pass's; the result is `scale` times that."""

    steps: int
    strength: float = DEFAULT_HIRES_STRENGTH
    scale: int = HIRES_SCALE
    upscaler: str = "Lanczos"


@dataclass(frozen=True)
class ImageRequestBase:
    """What every request carries besides its steps, schedulers, guidance and strength: the prompt
    (positional), then by keyword the seed, size, negative prompt, model, LoRAs and input image."""

    command: ClassVar[str]  # the command that asks for it ("imagine", "compare-steps"): the ledger's name for it
    prompt: str
    _: KW_ONLY
    seed: int = 0
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    model: str = ""  # registry name; "" = the worker's default model
    loras: tuple[tuple[str, float], ...] = ()  # (registry name, weight) of the model's LoRAs, in order
    # img2img: the input image (PNG bytes, resized to width x height by the worker) every lane starts from.
    image: bytes = field(default=b"", repr=False)

    @property
    def lane_steps(self) -> tuple[int, ...]:
        """Step count of each denoising lane this request becomes (its schedule's length)."""
        raise NotImplementedError

    @property
    def lane_seeds(self) -> tuple[int, ...]:
        """A grid's cells share one seed."""
        return (self.seed,) * len(self.lane_steps)


@dataclass(frozen=True)
class GenerateRequest(ImageRequestBase):
    """One `/imagine`: `count` images, image i seeded with `seed + i`."""

    command: ClassVar[str] = "imagine"
    steps: int = 30
    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = DEFAULT_GUIDANCE
    count: int = 1
    film: bool = False  # also return the predicted clean image of every step (the Steps film)
    # With an image: how much of the schedule runs over it (1.0: all of it, the image is only the
    # starting point's content).
    strength: float = 1.0
    # A hires pass after the first; with an input image, no first pass runs: the image is upscaled.
    hires: HiresFix | None = None
    # `steps: auto`: run at most `steps`, and stop once the predicted clean image has settled
    # (inference.settling); the image is then that prediction, and the result says the steps that ran.
    auto_steps: bool = False

    @property
    def upscale_only(self) -> bool:
        """An input image with a hires pass: the image is the first pass (Upscale)."""
        return self.hires is not None and bool(self.image)

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images this request returns."""
        scale = self.hires.scale if self.hires else 1
        return self.width * scale, self.height * scale

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return (self.steps,) * self.count

    @property
    def lane_seeds(self) -> tuple[int, ...]:
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.count))

    @property
    def lane_schedulers(self) -> tuple[str, ...]:
        return (self.scheduler,) * self.count


@dataclass(frozen=True)
class PlainRow:
    """`lora_compare` on /compare-steps: the row drawn without the request's LoRAs, at its own scheduler
    and guidance (the model's own, where a few-step LoRA switches them for the row with it)."""

    scheduler: str
    guidance: float


@dataclass(frozen=True)
class CompareStepsRequest(ImageRequestBase):
    """One `/compare-steps`: the same prompt and seed rendered once per step count. With `without_loras`
    (a LoRA comparison) two rows of those step counts: first without the LoRAs, then with them."""

    command: ClassVar[str] = "compare-steps"
    steps: tuple[int, ...] = DEFAULT_COMPARE_STEPS
    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = DEFAULT_GUIDANCE
    strength: float = 1.0
    without_loras: PlainRow | None = None  # a LoRA comparison: the plain row drawn first
    # Also show the longest run stopped at each shorter step count: its predicted clean image (x0) there,
    # from the same batched job (the longest cell's own run, its x0 decoded at those steps).
    stop_early: bool = False
    # Sweet spot over seeds: the ladder once per seed, a row each, all lanes in one job. Row i's seed is
    # `seed + i` (wrapping at MAX_SEED), as /imagine numbers the images of a count.
    seeds: int = 1

    @property
    def rows(self) -> int:
        return self.seeds if self.without_loras is None else 2

    @property
    def row_seeds(self) -> tuple[int, ...]:
        """Each row's seed: the request's, then the next ones (a LoRA comparison's rows share one)."""
        if self.without_loras is not None:
            return (self.seed,) * self.rows
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.seeds))

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return self.steps * self.rows

    @property
    def lane_seeds(self) -> tuple[int, ...]:
        return tuple(seed for seed in self.row_seeds for _ in self.steps)

    @property
    def lane_schedulers(self) -> tuple[str, ...]:
        if self.without_loras is None:
            return (self.scheduler,) * len(self.lane_steps)
        return (self.without_loras.scheduler,) * len(self.steps) + (self.scheduler,) * len(self.steps)


@dataclass(frozen=True)
class CompareSchedulersRequest(ImageRequestBase):
    """One `/compare-schedulers`: the same prompt and seed as a grid of rows = schedulers and
    columns = step counts; its lanes run row by row (every step count of the first scheduler first)."""

    command: ClassVar[str] = "compare-schedulers"
    schedulers: tuple[str, ...] = DEFAULT_GRID_SCHEDULERS
    steps: tuple[int, ...] = (5, 20, 50)
    guidance: float = DEFAULT_GUIDANCE
    strength: float = 1.0

    @property
    def scheduler(self) -> str:
        """Every row's scheduler, for the ledger and the parameters shown."""
        return ", ".join(self.schedulers)

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return self.steps * len(self.schedulers)

    @property
    def lane_schedulers(self) -> tuple[str, ...]:
        return tuple(name for name in self.schedulers for _ in self.steps)


@dataclass(frozen=True)
class CompareStrengthRequest(ImageRequestBase):
    """One `/compare-strength`: one input image and seed at several strengths (columns) and step counts
    (rows); its lanes run row by row (every strength of the first step count first). Every lane is
    img2img, so the image is required."""

    command: ClassVar[str] = "compare-strength"
    strengths: tuple[float, ...] = DEFAULT_COMPARE_STRENGTHS
    steps: tuple[int, ...] = (30,)  # the rows: each a schedule of that many steps
    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = DEFAULT_GUIDANCE

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return tuple(steps for steps in self.steps for _ in self.strengths)

    @property
    def lane_schedulers(self) -> tuple[str, ...]:
        return (self.scheduler,) * len(self.lane_steps)

    @property
    def lane_strengths(self) -> tuple[float, ...]:
        return self.strengths * len(self.steps)


@dataclass(frozen=True)
class CompareGuidanceRequest(ImageRequestBase):
    """One `/compare-guidance`: the same prompt and seed as a grid of columns = guidance values and
    rows = step counts (one row by default); its lanes run row by row (every guidance of the first
    step count first). On FLUX-dev the values are its distilled guidance (an input of the model)."""

    command: ClassVar[str] = "compare-guidance"
    guidances: tuple[float, ...] = DEFAULT_COMPARE_GUIDANCE
    steps: tuple[int, ...] = (30,)
    scheduler: str = DEFAULT_SCHEDULER
    strength: float = 1.0

    @property
    def guidance(self) -> float:
        """The first column's guidance (what a field for one value shows); each lane has its own."""
        return self.guidances[0]

    @property
    def lane_steps(self) -> tuple[int, ...]:
        return tuple(steps for steps in self.steps for _ in self.guidances)

    @property
    def lane_schedulers(self) -> tuple[str, ...]:
        return (self.scheduler,) * len(self.lane_steps)

    @property
    def lane_guidances(self) -> tuple[float, ...]:
        return self.guidances * len(self.steps)


Request = (
    GenerateRequest | CompareStepsRequest | CompareSchedulersRequest | CompareStrengthRequest | CompareGuidanceRequest
)
GridRequest = CompareStepsRequest | CompareSchedulersRequest
ComparisonRequest = CompareStepsRequest | CompareSchedulersRequest | CompareStrengthRequest | CompareGuidanceRequest
REQUEST_TYPES: tuple[type[Request], ...] = get_args(Request)
R = TypeVar("R", bound=ImageRequestBase)


def recast(request: Request, kind: type[R], **fields: Any) -> R:
    """The request as one of `kind`: what every request carries (prompt, seed, size, negative prompt, model,
    LoRAs, input image), with `fields` (the new kind's own, or any of those changed)."""
    shared = {f.name: getattr(request, f.name) for f in dataclasses.fields(ImageRequestBase)}
    return kind(**(shared | fields))


def lane_strengths(request: Request) -> tuple[float, ...]:
    """The strength each first-pass lane runs at (1.0 for a lane that starts from noise)."""
    if isinstance(request, CompareStrengthRequest):
        return request.lane_strengths
    return (request.strength if request.image else 1.0,) * len(request.lane_steps)


def lane_request(request: Request, index: int) -> Request:
    """The request as its lane `index` runs it: in a LoRA comparison the plain row's lanes run the
    request without its LoRAs, at that row's scheduler and guidance; every other lane runs the request."""
    if not isinstance(request, CompareStepsRequest) or request.without_loras is None or index >= len(request.steps):
        return request
    plain = request.without_loras
    return dataclasses.replace(
        request, loras=(), scheduler=plain.scheduler, guidance=plain.guidance, without_loras=None
    )


def row_requests(request: Request) -> tuple[Request, ...]:
    """Each row's own request where rows differ in more than the scheduler (a LoRA comparison: without,
    then with its LoRAs); the request alone otherwise."""
    if isinstance(request, CompareStepsRequest) and request.without_loras is not None:
        return (lane_request(request, 0), dataclasses.replace(request, without_loras=None))
    return (request,)


def guidance_values(request: Request) -> tuple[float, ...]:
    """Every guidance value a request runs at: a guidance grid's columns, else its one value."""
    return request.guidances if isinstance(request, CompareGuidanceRequest) else (request.guidance,)


def img2img_steps(steps: int, strength: float, *, flow: bool) -> int:
    """Steps an img2img lane runs of its `steps`-step schedule, as the family's diffusers img2img
    pipeline counts them (`get_timesteps`): SD/SDXL round `steps * strength` down; SD 3 and FLUX
    round the start index `steps - steps * strength` down, so they can run one step more."""
    if flow:
        return steps - int(max(steps - min(steps * strength, steps), 0))
    return steps - max(steps - min(int(steps * strength), steps), 0)


def lane_steps_run(request: Request, family: str = "") -> tuple[int, ...]:
    """Steps each first-pass lane actually runs: all of them, or an img2img lane's share at its
    strength (none for an Upscale, whose input image is its first pass)."""
    if isinstance(request, GenerateRequest) and request.upscale_only:
        return (0,) * len(request.lane_steps)
    if not input_image(request):
        return request.lane_steps
    flow = family in FLOW_FAMILIES
    lanes = zip(request.lane_steps, lane_strengths(request), strict=True)
    return tuple(img2img_steps(steps, strength, flow=flow) for steps, strength in lanes)


def hires_steps_run(request: Request, family: str = "") -> int:
    """Steps each lane's hires pass runs (0 without one)."""
    hires = request.hires if isinstance(request, GenerateRequest) else None
    if hires is None:
        return 0
    return img2img_steps(hires.steps, hires.strength, flow=family in FLOW_FAMILIES)


def step_pixels(request: Request, family: str = "") -> int:
    """Steps that run times the pixels they run at, summed over every lane and pass: a hires pass
    counts its own (larger) size."""
    first = sum(lane_steps_run(request, family)) * request.width * request.height
    if not isinstance(request, GenerateRequest) or request.hires is None:
        return first
    width, height = request.output_size
    return first + request.count * hires_steps_run(request, family) * width * height


def input_image(request: Request) -> bytes:
    """The request's input image (PNG bytes), or b"" for text to image."""
    return request.image


def total_steps(request: Request) -> int:
    """Denoising steps a request costs, summed over every image or grid cell and pass."""
    hires = hires_steps_run(request) * len(request.lane_steps)
    return sum(lane_steps_run(request)) + hires
