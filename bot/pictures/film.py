"""The Steps film: a run's predicted clean image at every step, captioned, as one animation.

Pillow only (no discord import), so the offline CLI writes the same film as the bot posts: the bot's
fits Discord's upload limit (`film_animation`), the CLI's is in the format its file name asks for
(`film_file`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from bot.pictures.fonts import draw_text, fit_text, text_length
from bot.pictures.render import CAPTION_BACKGROUND, CAPTION_TEXT, MARK
from inference.parameters import exif_parameters

log = logging.getLogger(__name__)

# What each frame shows, by `GeneratedImage.frames_source`: the film says so in its message.
SOURCE_NOTES = {
    "scheduler": "each frame is the scheduler's own prediction of the finished image (x0) at that step",
    "epsilon": "this scheduler reports no x0, so each frame is computed from the model's noise prediction: "
    "x0 = (x_t − √(1−ᾱ)·ε) / √ᾱ",
    "v_prediction": "this scheduler reports no x0, so each frame is computed from the model's v prediction: "
    "x0 = √ᾱ·x_t − √(1−ᾱ)·v",
    "flow": "this flow-matching scheduler reports no x0, so each frame is computed from the model's velocity: "
    "x0 = x_t − σ·v",
}
FILM_SECONDS = 4.0  # the whole run plays in about this long
FRAME_MS_RANGE = (60, 500)
LAST_FRAME_MS = 2000  # hold the finished image
WEBP_QUALITY = 75
_MIN_SIDE = 48


def source_note(source: str) -> str:
    """One sentence saying what the film's frames are."""
    return SOURCE_NOTES.get(source, "each frame is the predicted finished image (x0) at that step")


def frame_caption(step: int, total: int, prompt: str) -> str:
    """The caption under a frame: "step 7/20 · the prompt"."""
    return f"step {step}/{total} · {prompt}" if prompt else f"step {step}/{total}"


def captioned_frames(
    frames: Sequence[bytes], prompt: str, scale: float = 1.0, sigmas: Sequence[float] = ()
) -> list[Image.Image]:
    """Every frame (scaled) with a strip under it captioned "step k/N · prompt" and, given the noise
    level of every step (`sigmas`, one per frame), the noise strip under that (`noise_strip`)."""
    images = [Image.open(io.BytesIO(frame)).convert("RGB") for frame in frames]
    levels = list(sigmas) if len(sigmas) == len(images) else []  # a film of another length: no strip
    out = []
    for step, image in enumerate(images, start=1):
        if scale != 1.0:
            image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
        strip = max(18, round(image.width * 0.08))
        size = max(10, round(strip * 0.6))
        noise = noise_strip(image.width, strip * 2, levels, step) if levels else None
        extra = noise.height if noise else 0
        canvas = Image.new("RGB", (image.width, image.height + strip + extra), CAPTION_BACKGROUND)
        canvas.paste(image, (0, 0))
        text = fit_text(frame_caption(step, len(images), prompt), size, image.width - strip / 2)
        draw_text(canvas, (strip / 4, image.height + strip / 2), text, size, CAPTION_TEXT)
        if noise is not None:
            canvas.paste(noise, (0, image.height + strip))
        out.append(canvas)
    return out


NOISE_PAST = (88, 101, 242)  # steps already taken
NOISE_AHEAD = (72, 75, 82)  # steps still to come


def noise_strip(width: int, height: int, sigmas: Sequence[float], step: int) -> Image.Image:
    """The scheduler's whole noise schedule under a frame: a bar per step, its height the noise level (σ)
    the model was given there on a log scale (from half the last step's σ to the first step's), taken
    steps in blue, this step's bar highlighted, and "σ 14.6" of this step written at the right. It shows
    where a schedule spends its steps: Karras sigmas crowd the low-noise end."""
    strip = Image.new("RGB", (width, height), CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    size = max(10, round(height * 0.3))
    label = f"σ {sigmas[step - 1]:.3g}"
    label_width = round(text_length(label, size) + size)
    bars = max(1, width - label_width - 6)
    top, bottom = 3, height - 3
    floor = max(min(sigmas), 1e-6) / 2
    span = max(math.log(max(max(sigmas), floor * 2) / floor), 1e-9)
    for index, sigma in enumerate(sigmas, start=1):
        left = 3 + (index - 1) * bars / len(sigmas)
        right = max(left + 1, 3 + index * bars / len(sigmas) - 1)
        level = bottom - max(1.0, (bottom - top) * math.log(max(sigma, floor) / floor) / span)
        colour = MARK if index == step else NOISE_PAST if index < step else NOISE_AHEAD
        draw.rectangle((left, level, right, bottom), fill=colour)
    draw_text(strip, (width - label_width, height / 2), label, size, CAPTION_TEXT)
    return strip


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def durations(frames: int) -> list[int]:
    """Milliseconds per frame: the run in about FILM_SECONDS, the last frame held."""
    low, high = FRAME_MS_RANGE
    each = int(min(high, max(low, FILM_SECONDS * 1000 / max(1, frames))))
    return [each] * (frames - 1) + [LAST_FRAME_MS]


@dataclass(frozen=True)
class Film:
    """An encoded film and the size of its frames' pictures (the caption strips not counted)."""

    data: bytes
    extension: str  # "webp" or "gif"
    size: tuple[int, int]


def film_file(
    frames: Sequence[bytes],
    prompt: str,
    extension: str,
    parameters: str | None = None,
    sigmas: Sequence[float] = (),
) -> bytes:
    """The captioned animation as `extension` ("webp" or "gif") says, its frames at their own size;
    `parameters` (the run's A1111 infotext) in a WebP's EXIF UserComment or a GIF's comment; with the
    noise level of each step (`sigmas`), the noise strip under every frame."""
    images = captioned_frames(frames, prompt, sigmas=sigmas)
    return _gif(images, parameters) if extension == "gif" else _webp(images, WEBP_QUALITY, parameters)


def film_animation(
    frames: Sequence[bytes], prompt: str, limit: int, parameters: str | None = None, sigmas: Sequence[float] = ()
) -> Film:
    """The captioned animation for Discord: lossy animated WebP, or GIF where that is smaller, scaled down
    until it fits `limit`, carrying `parameters` as `film_file` does. Every step keeps its frame; raises
    ValueError when even tiny frames do not fit."""
    if not frames:
        raise ValueError("a film needs at least one frame")
    scale = 1.0
    while True:
        images = captioned_frames(frames, prompt, scale, sigmas)
        webp, gif = _webp(images, WEBP_QUALITY, parameters), _gif(images, parameters)
        data, extension = (gif, "gif") if len(gif) < len(webp) else (webp, "webp")  # GIF only where smaller
        if len(data) <= limit:
            log.info("film: %d frames at %.2fx as %s, %d bytes", len(images), scale, extension, len(data))
            return Film(data, extension, _scaled(frame_size(frames), scale))
        if min(images[0].size) <= _MIN_SIDE:
            raise ValueError(f"a film of {len(frames)} frames cannot fit into {limit} bytes")
        # Bytes grow with the pixel count: aim under the limit, and always shrink.
        scale *= min(0.8, (limit / len(data)) ** 0.5 * 0.9)


def frame_size(frames: Sequence[bytes]) -> tuple[int, int]:
    """The size of the film's frames as the worker made them (at most FILM_MAX_SIDE)."""
    with Image.open(io.BytesIO(frames[0])) as first:
        return first.size


def downscale_note(frames: tuple[int, int], image: tuple[int, int]) -> str | None:
    """A few words saying the film's frames are smaller than the image, or None when they are not."""
    if frames[0] >= image[0] and frames[1] >= image[1]:
        return None
    return f"downscaled to {frames[0]}×{frames[1]} (the image is {image[0]}×{image[1]})"


def _webp(images: list[Image.Image], quality: int, parameters: str | None = None) -> bytes:
    exif = exif_parameters(parameters) if parameters else b""  # where A1111 keeps a WebP's parameters
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=durations(len(images)),
                   loop=0, quality=quality, method=4, exif=exif)  # fmt: skip
    return buffer.getvalue()


def _gif(images: list[Image.Image], parameters: str | None = None) -> bytes:
    # Fast octree palettes: Pillow's default quantizer takes ~1 s per noisy 256 px frame.
    paletted = [image.quantize(256, method=Image.Quantize.FASTOCTREE) for image in images]
    # GIF has no EXIF: the parameters go into a comment extension, UTF-8.
    comment = {"comment": parameters.encode("utf-8")} if parameters else {}
    buffer = io.BytesIO()
    paletted[0].save(buffer, format="GIF", save_all=True, append_images=paletted[1:],
                     duration=durations(len(images)), loop=0, **comment)  # fmt: skip
    return buffer.getvalue()
