"""`/imagine` without steps under `learned_steps`: the step count where this server's grids settle for the model
and scheduler, once at least the operator's N grids say so, and the short line the result says it with."""

from __future__ import annotations

from dataclasses import dataclass

from bot.formatting import counted
from bot.storage.sweet_spots import SweetSpot


@dataclass(frozen=True)
class LearnedSteps:
    """The steps to run (None: the default stays) and the line that says why."""

    steps: int | None
    note: str


def learned_steps(
    spot: SweetSpot | None, *, model: str, scheduler: str, default_steps: int, ceiling: int, min_grids: int
) -> LearnedSteps:
    """Where this server's grids of `model` × `scheduler` settle, if there are at least `min_grids` of them,
    most of them settled and the step count is within `ceiling`; else the default, saying why in one line."""
    default = f"{counted(default_steps, 'step')}, the default"
    grids = spot.grids if spot is not None else 0
    if spot is None or grids < min_grids:
        return LearnedSteps(
            None,
            f"{default}: learned steps need {counted(min_grids, 'grid')} of {scheduler} on {model}; this server has "
            f"{grids} (`/compare-steps` adds one).",
        )
    if spot.median is None:
        return LearnedSteps(
            None, f"{default}: most of this server's {scheduler} grids on {model} did not settle (see `/sweet-spots`)."
        )
    if spot.median > ceiling:
        return LearnedSteps(
            None,
            f"{default}: this server's {scheduler} grids on {model} settle at {spot.median} steps, over the "
            f"{ceiling}-step limit.",
        )
    return LearnedSteps(
        spot.median,
        f"{counted(spot.median, 'step')}: where this server's grids settle for {scheduler} "
        f"({model}, the middle of {counted(grids, 'grid')}).",
    )
