"""Constructed pictures for the tests of the sweet-spot measure (inference.settling) and the grids that use it."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def picture(shift: int = 0, size: int = 128, background: tuple[int, int, int] = (40, 90, 160)) -> Image.Image:
    """A sky with a red square whose position moves by `shift` pixels."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).rectangle((30 + shift, 40, 70 + shift, 80), fill=(220, 40, 30))
    return image


def png(image: Image.Image) -> bytes:
    """The image as PNG bytes (what a worker's result carries)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
