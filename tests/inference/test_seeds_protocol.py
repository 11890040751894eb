"""`seeds` on /compare-steps on the wire: a lane per (seed, step count), row by row, the seeds derived from
the request's, and the values that can't make a grid refused in one line."""

from __future__ import annotations

import dataclasses

import pytest

from inference.parameters import grid_infotext
from inference.requests import MAX_SEED, CompareStepsRequest, InvalidRequest, PlainRow
from inference.validation import validate

GRID = CompareStepsRequest("a fox", steps=(5, 10, 20), seed=42, scheduler="Euler", seeds=3)


def test_a_seeds_grid_is_a_lane_per_seed_and_step_count_row_by_row() -> None:
    assert GRID.row_seeds == (42, 43, 44)
    assert GRID.lane_seeds == (42, 42, 42, 43, 43, 43, 44, 44, 44)
    assert GRID.lane_steps == (5, 10, 20) * 3
    assert GRID.lane_schedulers == ("Euler",) * 9
    validate(GRID)


def test_the_seeds_after_the_largest_wrap_to_zero() -> None:
    assert dataclasses.replace(GRID, seed=MAX_SEED).row_seeds == (MAX_SEED, 0, 1)


def test_one_seed_is_the_plain_grid() -> None:
    plain = dataclasses.replace(GRID, seeds=1)
    assert (plain.rows, plain.lane_seeds) == (1, (42, 42, 42))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": 7}, "seeds must be 2 to 6 (a row per seed); got 7."),
        ({"seeds": 0}, "seeds must be 2 to 6 (a row per seed); got 0."),
        ({"seeds": 10**9}, "seeds must be 2 to 6 (a row per seed); got 1000000000."),
        ({"seeds": True}, "seeds must be 2 to 6 (a row per seed); got True."),
        (
            {"seeds": 5},
            "A comparison grid has at most 12 cells; 5 seeds × 3 step counts would be 15: give fewer of either.",
        ),
        ({"stop_early": True}, "Choose one of seeds and stop_early: each draws rows of its own."),
        (
            {"without_loras": PlainRow("Euler", 7.5), "loras": (("lcm", 1.0),)},
            "Choose one of seeds and lora_compare: each draws rows of its own.",
        ),
    ],
)
def test_seeds_that_cant_make_a_grid_are_refused_in_one_line(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate(dataclasses.replace(GRID, **change))  # type: ignore[arg-type]
    assert str(error.value) == message


def test_the_grids_parameters_name_the_seeds_as_a1111s_seed_axis() -> None:
    text = grid_infotext(GRID, model="tiny")
    axes = 'Script: X/Y/Z plot, X Type: Steps, X Values: "5, 10, 20", Y Type: Seed, Y Values: "42, 43, 44"'
    assert text.endswith(axes)
    assert "Seed: 42," in text  # the first cell's own parameters
