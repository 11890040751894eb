"""The worker's reading of an input image: any mode to RGB, and bytes that are no image or too many pixels refused in
one line (the bot checks first: this is the worker's own guard)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from inference.engine.input_image import MAX_INPUT_PIXELS, UnreadableImage, read_image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_in_any_mode_is_read_as_rgb() -> None:
    image = read_image(png(Image.new("RGBA", (40, 24), (200, 10, 10, 128))))
    assert (image.mode, image.size) == ("RGB", (40, 24))


def test_bytes_that_are_no_image_are_refused_in_one_line() -> None:
    with pytest.raises(UnreadableImage, match=r"^The input image could not be read as an image\.$"):
        read_image(png(Image.new("RGB", (8, 8)))[:40])  # a truncated PNG


def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded() -> None:
    side = int(MAX_INPUT_PIXELS**0.5) + 1
    with pytest.raises(UnreadableImage, match=rf"^The input image is {side}x{side}: too many pixels\.$"):
        read_image(png(Image.new("1", (side, side))))  # one bit a pixel: a small file
