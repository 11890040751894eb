"""The Steps film: a run's predicted clean image at every step, captioned, as one animation that
fits Discord's upload limit.

Pillow only (no discord import), so the offline CLI writes the same film as the bot posts.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from PIL import Image

from bot.fonts import draw_text, fit_text
from bot.render import CAPTION_BACKGROUND, CAPTION_TEXT

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
FILM_FILE_LIMIT = 10 * 1024 * 1024  # what Discord takes from anyone: the CLI's films fit it too
FILM_SECONDS = 4.0  # the whole run plays in about this long
FRAME_MS_RANGE = (60, 500)
LAST_FRAME_MS = 2000  # hold the finished image
_SCALES = (1.0, 0.75, 0.5, 0.35, 0.25)
_WEBP_QUALITIES = (80, 55)


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
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)  # fmt: skip
        strip = max(18, round(image.width * 0.08))
        size = max(10, round(strip * 0.6))
        canvas = Image.new("RGB", (image.width, image.height + strip), CAPTION_BACKGROUND)
        canvas.paste(image, (0, 0))
        text = fit_text(frame_caption(step, len(images), prompt), size, image.width - strip / 2)
        draw_text(canvas, (strip / 4, image.height + strip / 2), text, size, CAPTION_TEXT)
        out.append(canvas)
    return out


def durations(frames: int) -> list[int]:
    """Milliseconds per frame: the run in about FILM_SECONDS, the last frame held."""
    low, high = FRAME_MS_RANGE
    each = int(min(high, max(low, FILM_SECONDS * 1000 / max(1, frames))))
    return [each] * (frames - 1) + [LAST_FRAME_MS]


def film_animation(frames: Sequence[bytes], prompt: str, limit: int) -> tuple[bytes, str]:
    """(bytes, extension) of the captioned animation: animated WebP, or GIF where that is smaller,
    at the largest scale where one fits `limit`. Every step keeps its frame; raises ValueError
    when even the smallest scale does not fit."""
    if not frames:
        raise ValueError("a film needs at least one frame")
    for scale in _SCALES:
        images = captioned_frames(frames, prompt, scale)
        # The best WebP quality that fits, unless the GIF is smaller still (flat, few-colour frames).
        webp = next((data for q in _WEBP_QUALITIES if len(data := _webp(images, q)) <= limit), None)
        gif = _gif(images)
        if len(gif) <= limit and (webp is None or len(gif) < len(webp)):
            data, extension = gif, "gif"
        elif webp is not None:
            data, extension = webp, "webp"
        else:
            continue
        log.info("film: %d frames at %.2fx as %s, %d bytes", len(images), scale, extension, len(data))
        return data, extension
    raise ValueError(f"a film of {len(frames)} frames cannot fit into {limit} bytes")


def _webp(images: list[Image.Image], quality: int) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=durations(len(images)),
                   loop=0, quality=quality, method=4)  # fmt: skip
    return buffer.getvalue()


def _gif(images: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations(len(images)),
                   loop=0, optimize=False)  # fmt: skip
    return buffer.getvalue()
