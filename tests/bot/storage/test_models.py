"""The ledger's models: a request stored as JSON parameters and rebuilt exactly."""

from __future__ import annotations

import json

import pytest

from bot.storage.models import command_of, params_to_request, request_to_params
from inference.protocol import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest, Request

IMAGINE = GenerateRequest("a fox", 17, "Heun", 9, 4.5, 768, 512, "blur", 3)
COMPARE = CompareStepsRequest("a boat", (3, 9), "DDIM", 1, 6.0, 256, 384, "fog")
SCHEDULERS = CompareSchedulersRequest("a cat", ("Euler a", "DDIM"), (2, 8), 4, 5.0, 256, 256, "rain", "tiny")


@pytest.mark.parametrize(
    "request_", [IMAGINE, COMPARE, SCHEDULERS], ids=["imagine", "compare-steps", "compare-schedulers"]
)
def test_a_request_survives_its_json_parameters(request_: Request) -> None:
    params = request_to_params(request_)
    assert all(not isinstance(value, tuple) for value in params.values())  # JSON has no tuples
    assert params_to_request(command_of(request_), params) == request_


def test_each_command_has_its_own_name_in_the_ledger() -> None:
    assert [command_of(request) for request in (IMAGINE, COMPARE, SCHEDULERS)] == [
        "imagine", "compare-steps", "compare-schedulers"
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
    from inference.protocol import CompareStrengthRequest

    image = b"\x89PNG\r\n\x1a\nstand-in"
    request = CompareStrengthRequest("a sun", (0.3, 0.6), (10, 20), "Euler", 4, 6.0, 256, 256, image=image)
    params = json.loads(json.dumps(request_to_params(request)))
    assert command_of(request) == "compare-strength" and "image" not in params
    assert params_to_request("compare-strength", params, image=image) == request
