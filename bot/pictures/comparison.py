"""A comparison grid of any kind drawn from its finished cells: the renderer and the A1111 parameters text that
the request's kind takes (strength, guidance, stop-early, or a steps or schedulers grid). The bot and the CLI
both draw through it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bot.pictures.grids import Grid, render_grid, render_strength_grid
from bot.pictures.guidance_grid import render_guidance_result
from bot.pictures.stop_early import render_stop_early_grid
from inference.parameters import grid_infotext, strength_grid_infotext
from inference.protocol import GeneratedImage
from inference.requests import CompareGuidanceRequest, CompareStepsRequest, CompareStrengthRequest, ComparisonRequest


def render_comparison(
    request: ComparisonRequest,
    cells: Sequence[GeneratedImage],
    *,
    model: str,
    lora_hashes: Mapping[str, str] | None = None,
    facts: str | None = None,
    device: str | None = None,
) -> Grid:
    """The grid of `cells` (in lane order) and its sweet spot in words; `lora_hashes` go in a steps or
    schedulers grid's parameters, `facts` and `device` in the footer (see `GridFrame`)."""
    if isinstance(request, CompareStrengthRequest):
        parameters = strength_grid_infotext(request, model=model)
        return render_strength_grid(request, cells, facts=facts, device=device, parameters=parameters)
    if isinstance(request, CompareGuidanceRequest):
        # Whether the guidance is FLUX-dev's distilled one: the worker wrote it in the cells' own text.
        return render_guidance_result(request, cells, model=model, facts=facts, device=device)
    if isinstance(request, CompareStepsRequest) and request.stop_early:
        return render_stop_early_grid(request, cells, model=model, facts=facts, device=device)
    parameters = grid_infotext(request, model=model, lora_hashes=lora_hashes)
    return render_grid(request, cells, facts=facts, device=device, parameters=parameters)
