"""The bot's rule: importing it (every module, the CLI included) loads no torch, diffusers or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers")

# Imports every module of the given packages in a fresh interpreter, then names the heavy ones loaded.
PROBE = f"""
import importlib, pkgutil, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(",".join(name for name in {HEAVY!r} if name in sys.modules))
"""


def heavy_modules_loaded_by(*modules: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after importing `modules` and all below them."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=True, cwd=REPO, timeout=120
    )
    return [name for name in result.stdout.strip().split(",") if name]


def test_importing_the_bot_and_the_cli_loads_no_torch() -> None:
    assert heavy_modules_loaded_by("bot", "bot.cli.main", "bot.chat.client", "inference.queues.local") == []


@pytest.mark.slow
def test_the_probe_sees_torch_when_the_engine_is_imported() -> None:
    """The check above can fail: the worker's engine module does load torch."""
    assert "torch" in heavy_modules_loaded_by("inference.engine.lane_engine")
