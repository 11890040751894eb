"""The A1111-style `parameters` text that travels inside every image Stepgrid writes.

AUTOMATIC1111, Forge, ComfyUI loaders and civitai read a PNG's `parameters` tEXt chunk (and a
JPEG/WebP's EXIF UserComment) in this form:

    a red fox in snow
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model: sd15

Stdlib only, so both the worker (its PNGs) and the bot (grids, re-encoded attachments) use it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence

from inference.requests import (
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStrengthRequest,
    GenerateRequest,
    GridRequest,
    HiresFix,
    Request,
    lane_strengths,
)

PNG_KEY = "parameters"
# The EXIF UserComment A1111 writes for JPEG/WebP: an 8-byte charset prefix, then UTF-16 big-endian.
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_LONG, _UNDEFINED = 4, 7  # TIFF field types; the EXIF spec types UserComment as UNDEFINED
_UNICODE_PREFIX = b"UNICODE\x00"
# A1111 (since 1.9) names the sigma schedule apart from the sampler: "DPM++ 2M Karras" is written
# "Sampler: DPM++ 2M, Schedule type: Karras"; its reader still splits the old combined names.
_SCHEDULE_SUFFIXES = (" Karras",)


def quote(value: object) -> str:
    """A value as A1111 writes it: JSON-quoted when it holds a comma, colon or newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def sampler_fields(scheduler: str) -> list[tuple[str, object]]:
    """("Sampler", …) and, for a Karras schedule, ("Schedule type", "Karras")."""
    for suffix in _SCHEDULE_SUFFIXES:
        if scheduler.endswith(suffix):
            return [("Sampler", scheduler.removesuffix(suffix)), ("Schedule type", suffix.strip())]
    return [("Sampler", scheduler)]


def infotext(
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    scheduler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    loras: Sequence[tuple[str, float]] = (),
    lora_hashes: Mapping[str, str] | None = None,
    strength: float | None = None,
    hires: HiresFix | None = None,
    distilled: bool = False,
    auto_note: str = "",
) -> str:
    """The `parameters` text of one image. LoRAs as A1111 writes them: `<lora:name:weight>` in the prompt
    and the short hash of each file in "Lora hashes". An img2img image carries its `Denoising strength`;
    a hires one its first pass's steps and size, then the hires pass's strength, scale, steps and upscaler.
    `distilled`: the guidance is FLUX-dev's distilled guidance, written as Forge does ("CFG scale: 1,
    Distilled CFG Scale: 3.5"). `auto_note`: how a `steps: auto` run ended ("Auto steps: …"), its
    "Steps" being the steps that ran."""
    cfg = (
        [("CFG scale", "1"), ("Distilled CFG Scale", f"{guidance:g}")]
        if distilled
        else [("CFG scale", f"{guidance:g}")]
    )
    fields: list[tuple[str, object]] = [
        ("Steps", steps),
        *sampler_fields(scheduler),
        *cfg,
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
    ]
    if model:
        fields.append(("Model", model))
    if hires is not None:
        fields.append(("Denoising strength", f"{hires.strength:g}"))
        fields += [("Hires upscale", hires.scale), ("Hires steps", hires.steps), ("Hires upscaler", hires.upscaler)]
    elif strength is not None:
        fields.append(("Denoising strength", f"{strength:g}"))
    if auto_note:
        fields.append(("Auto steps", auto_note))
    hashes = [f"{name}: {(lora_hashes or {}).get(name)}" for name, _ in loras if (lora_hashes or {}).get(name)]
    if hashes:
        fields.append(("Lora hashes", ", ".join(hashes)))
    lines = [" ".join([prompt.strip(), *(lora_tag(name, weight) for name, weight in loras)])]
    if negative_prompt.strip():
        lines.append(f"Negative prompt: {negative_prompt.strip()}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields))
    return "\n".join(lines)


# The "Lora hashes" field as `infotext` writes it: always quoted (its value holds colons).
_LORA_HASHES = re.compile(r'(?:^|, )Lora hashes: ("(?:[^"\\]|\\.)*")')


def lora_hashes_in(parameters: str | None) -> dict[str, str]:
    """The LoRA short hashes an image's `parameters` carry ("Lora hashes"), by LoRA name ({} for none):
    a grid takes them from its cells, which the worker wrote knowing the files."""
    lines = (parameters or "").splitlines()
    found = _LORA_HASHES.search(lines[-1]) if lines else None
    if found is None:
        return {}
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return {}
    pairs = (item.partition(": ") for item in str(value).split(", "))
    return {name.strip(): digest.strip() for name, _, digest in pairs if name.strip() and digest.strip()}


def lora_tag(name: str, weight: float) -> str:
    """A LoRA as A1111's prompt syntax writes it: <lora:name:0.8>."""
    return f"<lora:{name}:{weight:g}>"


def image_infotext(
    request: Request,
    *,
    seed: int,
    steps: int,
    model: str,
    scheduler: str | None = None,
    lora_hashes: Mapping[str, str] | None = None,
    strength: float | None = None,
    guidance: float | None = None,
    distilled: bool = False,
    auto_note: str = "",
) -> str:
    """The `parameters` of one image of `request` (its own seed, step count and, in a scheduler
    grid, scheduler; in a strength grid, its `strength`; in a guidance grid, `guidance`, FLUX-dev's
    `distilled` one)."""
    return infotext(
        request.prompt,
        request.negative_prompt,
        steps=steps,
        scheduler=scheduler or request.lane_schedulers[0],
        guidance=request.guidance if guidance is None else guidance,
        distilled=distilled,
        seed=seed,
        width=request.width,
        height=request.height,
        model=model,
        loras=request.loras,
        lora_hashes=lora_hashes,
        strength=(lane_strengths(request)[0] if strength is None else strength) if request.image else None,
        hires=request.hires if isinstance(request, GenerateRequest) else None,
        auto_note=auto_note,
    )


def auto_steps_note(ran: int, most: int, *, settled: bool, sigma: float) -> str:
    """How a `steps: auto` run ended, for its PNG text: "settled at 18 of 50 steps; the predicted clean
    image at sigma 0.58" or "ran all 50 steps; not settled"."""
    if not settled:
        return f"ran all {most} steps; not settled"
    return f"settled at {ran} of {most} steps; the predicted clean image at sigma {sigma:.2f}"


def grid_infotext(request: GridRequest, *, model: str, lora_hashes: Mapping[str, str] | None = None) -> str:
    """A grid's `parameters`, as A1111 writes an X/Y/Z plot's: the first cell's parameters, then the
    axes ("X Type: Steps, X Values: \"5, 10, 20\"", and a scheduler grid's "Y Type: Sampler", a seeds
    grid's "Y Type: Seed")."""
    first = image_infotext(request, seed=request.seed, steps=request.steps[0], model=model, lora_hashes=lora_hashes)
    axis = [("Script", "X/Y/Z plot"), ("X Type", "Steps"), ("X Values", ", ".join(map(str, request.steps)))]
    if isinstance(request, CompareSchedulersRequest):
        axis += [("Y Type", "Sampler"), ("Y Values", ", ".join(request.schedulers))]
    elif request.without_loras is not None:  # a LoRA comparison: the row without the LoRAs, then with them
        row = request.without_loras
        loras = " ".join(lora_tag(name, weight) for name, weight in request.loras)
        axis += [("Y Type", "LoRA"), ("Y Values", f"none ({row.scheduler}, CFG {row.guidance:g}), {loras}")]
    elif request.seeds > 1:  # a row per seed, as A1111's Seed axis
        axis += [("Y Type", "Seed"), ("Y Values", ", ".join(map(str, request.row_seeds)))]
    return first + ", " + ", ".join(f"{key}: {quote(value)}" for key, value in axis)


def guidance_grid_infotext(
    request: CompareGuidanceRequest,
    *,
    model: str,
    distilled: bool = False,
    lora_hashes: Mapping[str, str] | None = None,
) -> str:
    """A guidance grid's `parameters` as A1111 writes an X/Y/Z plot's: the first cell's, then the axes
    ("X Type: CFG Scale" — Forge's "Distilled CFG Scale" on FLUX-dev — and, with several step counts,
    "Y Type: Steps")."""
    first = image_infotext(
        request, seed=request.seed, steps=request.steps[0], model=model, lora_hashes=lora_hashes, distilled=distilled
    )
    x_type = "Distilled CFG Scale" if distilled else "CFG Scale"
    axis = [("Script", "X/Y/Z plot"), ("X Type", x_type), ("X Values", ", ".join(f"{g:g}" for g in request.guidances))]
    if len(request.steps) > 1:
        axis += [("Y Type", "Steps"), ("Y Values", ", ".join(map(str, request.steps)))]
    return first + ", " + ", ".join(f"{key}: {quote(value)}" for key, value in axis)


def exif_user_comment(text: str) -> bytes:
    """`text` as the EXIF UserComment A1111 writes into JPEG and WebP files."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def exif_parameters(text: str) -> bytes:
    """EXIF bytes (for Pillow's `exif=`) holding only `text` as the UserComment, typed UNDEFINED as the EXIF
    spec says: readers that follow it (piexif, so A1111's own `read_info_from_image`) fail on the BYTE
    type Pillow gives a bare bytes value."""
    comment = exif_user_comment(text)
    exif_ifd = 8 + 2 + 12 + 4  # after the header and IFD0's one entry
    data = exif_ifd + 2 + 12 + 4
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", EXIF_IFD, _LONG, 1, exif_ifd) + struct.pack(">I", 0)
    exif = struct.pack(">H", 1) + struct.pack(">HHII", USER_COMMENT, _UNDEFINED, len(comment), data)
    return b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd0 + exif + struct.pack(">I", 0) + comment


def strength_grid_infotext(
    request: CompareStrengthRequest, *, model: str, lora_hashes: Mapping[str, str] | None = None
) -> str:
    """A strength grid's `parameters`, as A1111 writes an X/Y/Z plot over img2img: the first cell's parameters
    (its "Denoising strength"), then the axes, named as A1111's script names them ("X Type: Denoising", and
    "Y Type: Steps" with several step counts)."""
    first = image_infotext(
        request, seed=request.seed, steps=request.steps[0], model=model, lora_hashes=lora_hashes,
        strength=request.strengths[0],
    )  # fmt: skip
    axis = [
        ("Script", "X/Y/Z plot"),
        ("X Type", "Denoising"),
        ("X Values", ", ".join(f"{s:g}" for s in request.strengths)),
    ]
    if len(request.steps) > 1:
        axis += [("Y Type", "Steps"), ("Y Values", ", ".join(map(str, request.steps)))]
    return first + ", " + ", ".join(f"{key}: {quote(value)}" for key, value in axis)
