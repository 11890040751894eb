"""What `/compare-guidance` and `stepgrid compare-guidance` build from what people type: guidance values
as columns (sorted; a ladder around the model's own when left out), step counts as rows."""

from __future__ import annotations

import pytest

from bot.errors import InvalidOption
from bot.job_requests import RequestDefaults, RequestOptions, build_request, guidance_ladder
from inference.requests import CompareGuidanceRequest


def test_left_out_the_columns_are_a_ladder_around_the_models_guidance_and_one_row_of_its_steps() -> None:
    request = build_request(RequestOptions("a fox", seed=1, guidance_grid=True), RequestDefaults(steps=20))
    assert request == CompareGuidanceRequest("a fox", guidances=(1.0, 3.0, 5.0, 7.5, 10.0, 15.0), steps=(20,), seed=1)


def test_a_distilled_guidance_gets_its_own_ladder_and_the_models_value_is_always_a_column() -> None:
    assert guidance_ladder(3.5, 12) == (1.5, 2.5, 3.5, 5.0, 7.0, 10.0)
    assert guidance_ladder(6.0, 3) == (1.0, 6.0, 15.0)  # trimmed to fit, its own value kept


def test_typed_values_are_sorted_and_rows_come_from_the_step_list() -> None:
    options = RequestOptions("a fox", seed=1, guidances="7; 1 3.5", compare_steps="20,10", guidance_grid=True)
    request = build_request(options, RequestDefaults())
    assert isinstance(request, CompareGuidanceRequest)
    assert (request.guidances, request.steps) == ((1.0, 3.5, 7.0), (10, 20))


@pytest.mark.parametrize("text", ["3, x", "a" * 101, ", ,"])
def test_unreadable_guidance_values_say_how_to_write_them(text: str) -> None:
    with pytest.raises(InvalidOption, match=r"guidance values|No guidance values given"):
        build_request(RequestOptions("a fox", guidances=text, guidance_grid=True), RequestDefaults())
