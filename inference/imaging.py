"""Pillow/NumPy helpers shared by the worker: PNG encoding and cheap latent previews."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def latent_preview_png(latents: np.ndarray, size: int = PREVIEW_SIZE) -> bytes:
    """A small RGB preview of (4, h, w) latents through the linear latent->RGB map."""
    rgb = np.einsum("chw,cr->hwr", latents.astype(np.float32), LATENT_RGB_FACTORS)
    pixels = ((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return encode_png(image)
