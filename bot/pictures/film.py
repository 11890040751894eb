"""The Steps film: a run's predicted clean image at every step, captioned, as one animation.

Pillow only (no discord import), so the offline CLI writes the same film as the bot posts: the bot's
fits Discord's upload limit (`film_animation`), the CLI's is in the format its file name asks for
(`film_file`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from bot.pictures.fonts import draw_text, fit_text
from bot.pictures.render import CAPTION_BACKGROUND, CAPTION_TEXT
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


def captioned_frames(frames: Sequence[bytes], prompt: str, scale: float = 1.0) -> list[Image.Image]:
    """Every frame (scaled) with a strip under it captioned "step k/N · prompt"."""
    images = [Image.open(io.BytesIO(frame)).convert("RGB") for frame in frames]
    out = []
    for step, image in enumerate(images, start=1):
        if scale != 1.0:
            image = image.resize(_scaled(image.size, scale), Image.Resampling.LANCZOS)
        strip = max(18, round(image.width * 0.08))
        size = max(10, round(strip * 0.6))
        canvas = Image.new("RGB", (image.width, image.height + strip), CAPTION_BACKGROUND)
        canvas.paste(image, (0, 0))
        text = fit_text(frame_caption(step, len(images), prompt), size, image.width - strip / 2)
        draw_text(canvas, (strip / 4, image.height + strip / 2), text, size, CAPTION_TEXT)
        out.append(canvas)
    return out


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


def film_file(frames: Sequence[bytes], prompt: str, extension: str, parameters: str | None = None) -> bytes:
    """The captioned animation as `extension` ("webp" or "gif") says, its frames at their own size;
    `parameters` (the run's A1111 infotext) in a WebP's EXIF UserComment or a GIF's comment."""
    images = captioned_frames(frames, prompt)
    return _gif(images, parameters) if extension == "gif" else _webp(images, WEBP_QUALITY, parameters)


def film_animation(frames: Sequence[bytes], prompt: str, limit: int, parameters: str | None = None) -> Film:
    """The captioned animation for Discord: lossy animated WebP, or GIF where that is smaller, scaled down
    until it fits `limit`, carrying `parameters` as `film_file` does. Every step keeps its frame; raises
    ValueError when even tiny frames do not fit."""
    if not frames:
        raise ValueError("a film needs at least one frame")
    scale = 1.0
    while True:
        images = captioned_frames(frames, prompt, scale)
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
