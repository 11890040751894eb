"""PNG encoding with A1111's parameters chunk, pixels back from a PNG, and cheap latent previews."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from inference.imaging import PREVIEW_SIZE, encode_png, latent_preview_png, png_pixels
from inference.parameters import PNG_KEY


def test_a_png_carries_its_parameters_text_and_its_pixels_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    png = encode_png(Image.fromarray(pixels), parameters="a fox\nSteps: 4")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.text[PNG_KEY] == "a fox\nSteps: 4"
    assert np.array_equal(png_pixels(png), pixels)


def test_without_parameters_a_png_has_no_parameters_chunk() -> None:
    with Image.open(io.BytesIO(encode_png(Image.new("RGB", (4, 4))))) as image:
        assert PNG_KEY not in image.text


def test_png_pixels_are_rgb_whatever_the_mode() -> None:
    assert png_pixels(encode_png(Image.new("L", (5, 3), 200))).shape == (3, 5, 3)


def test_a_preview_fits_the_preview_size_keeping_the_aspect() -> None:
    png = latent_preview_png(np.zeros((4, 16, 32), dtype=np.float16))
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (PREVIEW_SIZE, PREVIEW_SIZE // 2) and image.mode == "RGB"


def test_sds_four_channels_use_the_linear_map_and_zero_latents_are_mid_grey() -> None:
    pixels = png_pixels(latent_preview_png(np.zeros((4, 8, 8), dtype=np.float32), size=8))
    assert (pixels == 127).all()


def test_sixteen_channel_latents_show_their_first_three_stretched_to_full_range() -> None:
    latents = np.zeros((16, 8, 8), dtype=np.float32)
    latents[0, :, :4] = 5.0  # the left half bright in red; the other channels flat
    pixels = png_pixels(latent_preview_png(latents, size=8))
    assert (pixels[:, :4, 0] == 255).all() and (pixels[:, 4:, 0] == 0).all()
    assert (pixels[..., 1:] == 0).all()  # a flat channel is stretched over nothing: its low end
