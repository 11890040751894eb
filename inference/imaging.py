"""Pillow/NumPy helpers shared by the worker: PNG encoding and cheap latent previews."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from inference.parameters import PNG_KEY

# Linear map from SD 1.x/2.x latent channels to RGB (the well-known cheap approximation): good
# enough to show composition and colour while denoising, with no extra model.
LATENT_RGB_FACTORS = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)
PREVIEW_SIZE = 128


def encode_png(image: Image.Image, *, parameters: str | None = None) -> bytes:
    """PNG bytes; `parameters` (A1111's infotext) goes into the `parameters` text chunk."""
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text(PNG_KEY, parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4, pnginfo=info)
    return buffer.getvalue()


def png_pixels(png: bytes) -> np.ndarray:
    """An encoded picture back as HxWx3 uint8 pixels (what the image checker reads)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def latent_preview_png(latents: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A small RGB preview of (channels, h, w) latents: SD's linear latent->RGB map for 4 channels;
    for other latent spaces (FLUX, SD3: 16) the first three channels, each stretched to its range."""
    latents = latents.astype(np.float32)
    if latents.shape[0] == LATENT_RGB_FACTORS.shape[0]:
        rgb = np.einsum("chw,cr->hwr", latents, LATENT_RGB_FACTORS)
    else:
        first = latents[:3].transpose(1, 2, 0)
        low, high = first.min(axis=(0, 1)), first.max(axis=(0, 1))
        rgb = (first - low) / np.maximum(high - low, 1e-6) * 2 - 1
    pixels = ((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return encode_png(image)
