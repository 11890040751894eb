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

from inference.protocol import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest, HiresFix, Request

PNG_KEY = "parameters"
# The EXIF UserComment A1111 writes for JPEG/WebP: an 8-byte charset prefix, then UTF-16 big-endian.
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
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
    strength: float | None = None,
    hires: HiresFix | None = None,
) -> str:
    """The `parameters` text of one image. An img2img image carries its `Denoising strength`; a hires
    one its first pass's steps and size, then the hires pass's strength, scale, steps and upscaler."""
    fields: list[tuple[str, object]] = [
        ("Steps", steps),
        *sampler_fields(scheduler),
        ("CFG scale", f"{guidance:g}"),
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
    lines = [prompt.strip()]
    if negative_prompt.strip():
        lines.append(f"Negative prompt: {negative_prompt.strip()}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields))
    return "\n".join(lines)


def image_infotext(request: Request, *, seed: int, steps: int, model: str, scheduler: str | None = None) -> str:
    """The `parameters` of one image of `request` (its own seed, step count and, in a scheduler
    grid, scheduler)."""
    return infotext(
        request.prompt,
        request.negative_prompt,
        steps=steps,
        scheduler=scheduler or request.lane_schedulers[0],
        guidance=request.guidance,
        seed=seed,
        width=request.width,
        height=request.height,
        model=model,
        strength=request.strength if request.image else None,
        hires=request.hires if isinstance(request, GenerateRequest) else None,
    )


def grid_infotext(request: CompareStepsRequest | CompareSchedulersRequest, *, model: str) -> str:
    """A grid's `parameters`, as A1111 writes an X/Y/Z plot's: the first cell's parameters, then the
    axes ("X Type: Steps, X Values: \"5, 10, 20\"", and a scheduler grid's "Y Type: Sampler")."""
    first = image_infotext(request, seed=request.seed, steps=request.steps[0], model=model)
    axis = [("Script", "X/Y/Z plot"), ("X Type", "Steps"), ("X Values", ", ".join(map(str, request.steps)))]
    if isinstance(request, CompareSchedulersRequest):
        axis += [("Y Type", "Sampler"), ("Y Values", ", ".join(request.schedulers))]
    return first + ", " + ", ".join(f"{key}: {quote(value)}" for key, value in axis)


def exif_user_comment(text: str) -> bytes:
    """`text` as the EXIF UserComment A1111 writes into JPEG and WebP files."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")
