"""What `/compare-steps seeds:` and `stepgrid compare-steps --seeds` build: a row per seed, the model's ladder
spread to fit the cell limit when the step counts are left out, and the combinations that can't be one grid
refused in one line."""

from __future__ import annotations

import pytest

from bot.errors import InvalidOption
from bot.job_requests import RequestDefaults, RequestOptions, build_request, checked, derive_request
from inference.requests import CompareStepsRequest, GenerateRequest


def test_left_out_the_ladder_is_spread_so_every_seeds_row_fits_the_cell_limit() -> None:
    ladder = (5, 10, 15, 20, 30, 40, 50)
    request = build_request(RequestOptions("a fox", seed=7, grid=True, seeds=4), RequestDefaults(compare_steps=ladder))
    assert isinstance(request, CompareStepsRequest)
    assert (request.steps, request.row_seeds) == ((5, 20, 50), (7, 8, 9, 10))
    checked(request)


def test_the_step_counts_given_are_kept() -> None:
    options = RequestOptions("a fox", seed=7, grid=True, seeds=2, compare_steps="20,10,5")
    request = build_request(options, RequestDefaults())
    assert isinstance(request, CompareStepsRequest) and (request.steps, request.seeds) == ((5, 10, 20), 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RequestOptions("a fox", seeds=3), "seeds is for /compare-steps: leave it out here."),
        (RequestOptions("a fox", grid=True, seeds=3, stop_early=True), "Choose one of seeds and stop_early"),
        (
            RequestOptions("a fox <lora:lcm:1>", grid=True, seeds=3, lora_compare=True),
            "Choose one of seeds and lora_compare",
        ),
        (RequestOptions("a fox", grid=True, seeds="3"), "seeds must be a whole number; got '3'."),  # type: ignore[arg-type]
    ],
)
def test_seeds_where_they_cant_make_one_grid_are_refused_in_one_line(options: RequestOptions, message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        checked(build_request(options, RequestDefaults(lora_weights=(("lcm", 1.0),))))


def test_the_compare_button_under_an_image_makes_a_one_seed_grid() -> None:
    request = derive_request(GenerateRequest("a fox", seed=3, steps=20), "compare")
    assert isinstance(request, CompareStepsRequest) and request.seeds == 1


def test_reroll_keeps_the_seeds() -> None:
    grid = CompareStepsRequest("a fox", steps=(5, 10), seed=3, seeds=3)
    assert derive_request(grid, "reroll").seeds == 3  # type: ignore[union-attr]
