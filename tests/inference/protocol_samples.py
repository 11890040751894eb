"""Requests and models the protocol and validation tests share."""

from __future__ import annotations

import dataclasses

from inference.model_info import GUIDANCE_IGNORED, GUIDANCE_INPUT, ModelInfo
from inference.requests import SCHEDULER_NAMES, CompareStrengthRequest, GenerateRequest

GOOD = GenerateRequest("a lighthouse at dusk")

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # validation reads the signature only; the worker decodes

SDXL_TURBO = ModelInfo(
    name="sdxl-turbo", family="sdxl", schedulers=SCHEDULER_NAMES, default_scheduler="Euler a", default_steps=4,
    default_guidance=0.0, compare_steps=(1, 2, 3, 4, 6, 8), native_size=1024, size_multiple=8, max_steps=8,
)  # fmt: skip
FLUX = ModelInfo(
    name="flux", family="flux", schedulers=("Euler", "Heun", "DPM++ 2M", "UniPC"), default_scheduler="Euler",
    default_steps=4, default_guidance=0.0, compare_steps=(1, 2, 3, 4, 6, 8), native_size=1024, size_multiple=16,
    guidance_mode=GUIDANCE_IGNORED,
)  # fmt: skip
FLUX_DEV = dataclasses.replace(FLUX, name="flux-dev", default_guidance=3.5, guidance_mode=GUIDANCE_INPUT)


def strength_grid(**fields: object) -> CompareStrengthRequest:
    values: dict[str, object] = {"strengths": (0.3, 0.6, 0.9), "steps": (10,), "image": b"\x89PNG\r\n\x1a\n", **fields}
    return CompareStrengthRequest("a cat", **values)  # type: ignore[arg-type]
