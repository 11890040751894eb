"""What a benchmark ran on, as its saved figures name it: the GPU, or the CPU and its thread count."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from inference.models.loading import LoadedModel


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo) and the threads torch uses."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"


def device_name(model: LoadedModel) -> str:
    """The card a model runs on, or the CPU."""
    return torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else cpu_name()
