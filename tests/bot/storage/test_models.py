"""The ledger's models: a request stored as JSON parameters and rebuilt exactly."""

from __future__ import annotations

import json

import pytest

from bot.storage.models import command_of, params_to_request, request_to_params
from inference.requests import (
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    Request,
)

IMAGINE = GenerateRequest(
    "a fox", steps=17, scheduler="Heun", seed=9, guidance=4.5, width=768, height=512, negative_prompt="blur", count=3
)
COMPARE = CompareStepsRequest(
    "a boat", steps=(3, 9), scheduler="DDIM", seed=1, guidance=6.0, width=256, height=384, negative_prompt="fog"
)
SCHEDULERS = CompareSchedulersRequest(
    "a cat",
    schedulers=("Euler a", "DDIM"),
    steps=(2, 8),
    seed=4,
    guidance=5.0,
    width=256,
    height=256,
    negative_prompt="rain",
    model="tiny",
)
GUIDANCE = CompareGuidanceRequest(
    "a dog",
    guidances=(1.0, 3.5, 7.0),
    steps=(4, 8),
    scheduler="DDIM",
    seed=2,
    width=256,
    height=256,
    negative_prompt="haze",
    model="tiny",
)


@pytest.mark.parametrize(
    "request_",
    [IMAGINE, COMPARE, SCHEDULERS, GUIDANCE],
    ids=["imagine", "compare-steps", "compare-schedulers", "compare-guidance"],
)
def test_a_request_survives_its_json_parameters(request_: Request) -> None:
    params = request_to_params(request_)
    assert all(not isinstance(value, tuple) for value in params.values())  # JSON has no tuples
    assert params_to_request(command_of(request_), params) == request_


def test_each_command_has_its_own_name_in_the_ledger() -> None:
    assert [command_of(request) for request in (IMAGINE, COMPARE, SCHEDULERS, GUIDANCE)] == [
        "imagine", "compare-steps", "compare-schedulers", "compare-guidance"
    ]  # fmt: skip


def test_parameters_a_newer_version_stored_are_ignored() -> None:
    params = {**request_to_params(IMAGINE), "film_frames": 12}
    assert params_to_request("imagine", params) == IMAGINE


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown command 'paint'"):
        params_to_request("paint", request_to_params(IMAGINE))


def test_a_requests_loras_survive_the_json_the_ledger_stores() -> None:
    import json

    request = GenerateRequest("a fox", loras=(("pixel", 0.8), ("lcm", 1.0)))
    stored = json.loads(json.dumps(request_to_params(request)))
    assert stored["loras"] == [["pixel", 0.8], ["lcm", 1.0]]  # the ledger's record of the LoRAs used
    assert params_to_request("imagine", stored) == request


def test_a_strength_grid_is_its_own_command_and_comes_back_with_its_input_image() -> None:
    from inference.requests import CompareStrengthRequest

    image = b"\x89PNG\r\n\x1a\nstand-in"
    request = CompareStrengthRequest(
        "a sun",
        strengths=(0.3, 0.6),
        steps=(10, 20),
        scheduler="Euler",
        seed=4,
        guidance=6.0,
        width=256,
        height=256,
        image=image,
    )
    params = json.loads(json.dumps(request_to_params(request)))
    assert command_of(request) == "compare-strength" and "image" not in params
    assert params_to_request("compare-strength", params, image=image) == request
