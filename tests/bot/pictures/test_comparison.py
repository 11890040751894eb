"""A comparison grid of any kind is drawn by the renderer its kind takes, with that kind's parameters text."""

from __future__ import annotations

import pytest

from bot.pictures.comparison import render_comparison
from bot.pictures.grids import Grid, render_grid, render_strength_grid
from bot.pictures.guidance_grid import render_guidance_result
from bot.pictures.stop_early import render_stop_early_grid
from inference.parameters import grid_infotext, strength_grid_infotext
from inference.protocol import GeneratedImage
from inference.requests import (
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    ComparisonRequest,
)
from tests.bot.fakes import png_of

SIDE = 64
FRAME = {"facts": "tiny · seed 7", "device": "cpu"}
HASHES = {"pixel": "abc123"}


def cells(request: ComparisonRequest) -> list[GeneratedImage]:
    """A cell per lane, each a shade lighter than the one before."""
    shades = enumerate(request.lane_steps)
    return [GeneratedImage(png_of(SIDE, SIDE, (20 * i, 90, 120)), 7, steps, SIDE, SIDE, 0.1) for i, steps in shades]


def own_renderer(request: ComparisonRequest, images: list[GeneratedImage]) -> Grid:
    """What the kind's own renderer draws, called as the bot and the CLI called it before."""
    if isinstance(request, CompareStrengthRequest):
        return render_strength_grid(request, images, **FRAME, parameters=strength_grid_infotext(request, model="tiny"))
    if isinstance(request, CompareGuidanceRequest):
        return render_guidance_result(request, images, model="tiny", **FRAME)
    if isinstance(request, CompareStepsRequest) and request.stop_early:
        return render_stop_early_grid(request, images, model="tiny", **FRAME)
    parameters = grid_infotext(request, model="tiny", lora_hashes=HASHES)
    return render_grid(request, images, **FRAME, parameters=parameters)


@pytest.mark.parametrize(
    "request_",
    [
        CompareStepsRequest("a fox", steps=(2, 4, 8), width=SIDE, height=SIDE, loras=(("pixel", 0.8),)),
        CompareStepsRequest("a fox", steps=(2, 4, 8), width=SIDE, height=SIDE, stop_early=True),
        CompareStepsRequest("a fox", steps=(2, 4), width=SIDE, height=SIDE, seeds=2),
        CompareSchedulersRequest("a fox", schedulers=("Euler", "DDIM"), steps=(2, 4), width=SIDE, height=SIDE),
        CompareStrengthRequest("a fox", strengths=(0.3, 0.6), width=SIDE, height=SIDE, image=png_of(SIDE, SIDE)),
        CompareGuidanceRequest("a fox", guidances=(1.0, 7.5), steps=(4,), width=SIDE, height=SIDE),
    ],
    ids=["steps", "stop-early", "seeds", "schedulers", "strength", "guidance"],
)
def test_each_kind_of_comparison_is_drawn_by_its_own_renderer(request_: ComparisonRequest) -> None:
    images = cells(request_)
    grid = render_comparison(request_, images, model="tiny", lora_hashes=HASHES, **FRAME)
    assert grid == own_renderer(request_, images)
