"""Which rows of a finished grid a server remembers, and where each settled: honest step ladders from text
without LoRAs, rows with a withheld cell left out."""

from __future__ import annotations

from collections.abc import Sequence

from bot.pictures.remembered_rows import remembered_rows, settle_step
from inference.protocol import GeneratedImage
from inference.requests import (
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    Request,
)
from tests.bot.fakes import png_of

STEPS = (5, 10, 20)
SETTLING = [(200, 0, 0), (90, 120, 200), (90, 120, 200)]  # changes once, then not at all: settles at 10
CHANGING = [(0, 0, 0), (120, 120, 120), (250, 250, 250)]  # still changing at its last step count


def cells(request: Request, colours: Sequence[tuple[int, int, int]]) -> list[GeneratedImage]:
    return [
        GeneratedImage(png=png_of(64, 64, colour), seed=1, steps=steps, width=64, height=64, seconds=0.1)
        for steps, colour in zip(request.lane_steps, colours, strict=True)
    ]


def settles(request: Request, colours: Sequence[tuple[int, int, int]], withheld: Sequence[int] = ()) -> list[tuple]:
    return [
        (index, row.scheduler, row.steps, settle_step(row))
        for index, row in remembered_rows(request, cells(request, colours), withheld)
    ]


def test_a_scheduler_grid_gives_each_row_its_settle_step_or_not_settled() -> None:
    request = CompareSchedulersRequest("a fox", schedulers=("Euler", "DDIM"), steps=STEPS)

    assert settles(request, SETTLING + CHANGING) == [(0, "Euler", STEPS, 10), (1, "DDIM", STEPS, None)]


def test_a_row_with_a_withheld_cell_is_left_out() -> None:
    request = CompareSchedulersRequest("a fox", schedulers=("Euler", "DDIM"), steps=STEPS)

    assert settles(request, SETTLING + CHANGING, withheld=[4]) == [(0, "Euler", STEPS, 10)]


def test_a_steps_grid_is_one_row() -> None:
    request = CompareStepsRequest("a fox", steps=STEPS, scheduler="Euler")

    assert settles(request, SETTLING) == [(0, "Euler", STEPS, 10)]


def test_grids_with_a_lora_from_an_image_or_over_guidance_and_single_images_are_not_remembered() -> None:
    png = png_of(64, 64)
    for request in (
        CompareStepsRequest("a fox", steps=STEPS, loras=(("pixel", 0.8),)),
        CompareStepsRequest("a fox", steps=STEPS, image=png, strength=0.6),
        CompareGuidanceRequest("a fox", steps=(5,), guidances=(1.0, 3.0, 7.0)),
        GenerateRequest("a fox", steps=20),
    ):
        assert remembered_rows(request, cells(request, SETTLING[: len(request.lane_steps)])) == []


def test_a_grid_over_seeds_gives_a_row_per_seed() -> None:
    request = CompareStepsRequest("a fox", steps=STEPS, scheduler="Euler", seeds=2)

    assert settles(request, SETTLING + CHANGING) == [(0, "Euler", STEPS, 10), (1, "Euler", STEPS, None)]
