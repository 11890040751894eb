"""An input image's bytes read as an RGB image, with the worker's own guard against a decompression bomb."""

from __future__ import annotations

import io

from PIL import Image


class UnreadableImage(ValueError):
    """A request's input image can't be decoded (the bot checks first: this is the worker's guard)."""


# The worker's own guard against a decompression bomb, well above inference.requests.MAX_PIXELS.
MAX_INPUT_PIXELS = 4 * 2048 * 2048


def read_image(png: bytes) -> Image.Image:
    """An input image's bytes as an RGB image; raises UnreadableImage."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise UnreadableImage(f"The input image is {image.width}x{image.height}: too many pixels.")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnreadableImage):
            raise
        raise UnreadableImage("The input image could not be read as an image.") from exc
