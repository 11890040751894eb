"""LoRAs in a server's limits: a step-distillation LoRA's defaults, the allowed LoRAs and their check."""

from __future__ import annotations

import dataclasses

import pytest

from bot.config import Settings
from bot.limits.changes import validate_limit_changes
from bot.limits.server import EffectiveLimits, InvalidLimit, ServerLimits
from inference.model_info import LoraInfo
from inference.requests import SCHEDULER_NAMES, GenerateRequest
from tests.bot.fakes import SD15
from tests.bot.limits.shared import SETTINGS, limits, refusal

LIGHTNING = LoraInfo("lightning", 1.0, few_step=True, default_steps=4, default_scheduler="Euler",
                     default_guidance=0.0, compare_steps=(1, 2, 3, 4, 6, 8), schedulers=SCHEDULER_NAMES)  # fmt: skip
PIXEL = LoraInfo("pixel", 0.8, ("pixel art",))
WITH_LORAS = dataclasses.replace(SD15, loras=(PIXEL, LIGHTNING))
REGISTRY = """
[[models]]
name = "sd15"
source = "tiny"
  [[models.loras]]
  name = "pixel"
  source = "/loras/pixel.safetensors"
  [[models.loras]]
  name = "lightning"
  source = "/loras/lightning.safetensors"
  few_step = true
"""
LORA_SETTINGS = Settings(_env_file=None, model=REGISTRY)  # type: ignore[call-arg]


def test_a_step_distillation_lora_brings_its_steps_scheduler_guidance_and_ladder() -> None:
    plain = limits().request_defaults(WITH_LORAS, ["pixel"])
    assert (plain.steps, plain.scheduler, plain.guidance) == (25, "Euler a", 7.5)
    assert plain.lora_weights == (("pixel", 0.8), ("lightning", 1.0))
    few = limits(default_steps=30).request_defaults(WITH_LORAS, ["Lightning"])  # even over the server's default
    assert (few.steps, few.scheduler, few.guidance, few.compare_steps) == (4, "Euler", 0.0, (1, 2, 3, 4, 6, 8))


def test_a_lora_the_server_does_not_allow_is_refused_naming_the_allowed_ones() -> None:
    request = GenerateRequest("a fox", loras=(("pixel", 1.0),))
    refused = refusal(request, limits(allowed_loras=("lightning",)))
    assert str(refused) == "This server doesn't allow the LoRA pixel; it allows: lightning."
    assert refused.limit == "allowed_loras"
    assert str(refusal(request, limits(allowed_loras=()))).endswith("it allows: none.")


def test_allowed_loras_are_the_operators_named_in_any_case_or_none() -> None:
    current = ServerLimits()
    assert validate_limit_changes({"allowed_loras": "Lightning, pixel"}, current, LORA_SETTINGS) == {
        "allowed_loras": ("pixel", "lightning")
    }
    assert validate_limit_changes({"allowed_loras": "none"}, current, LORA_SETTINGS) == {"allowed_loras": ()}
    with pytest.raises(InvalidLimit, match="unknown LoRA 'pixl'; the operator's LoRAs are: pixel, lightning"):
        validate_limit_changes({"allowed_loras": "pixl"}, current, LORA_SETTINGS)
    assert EffectiveLimits.combine(None, SETTINGS).allowed_loras is None  # unset: every LoRA


def test_lora_compare_gives_each_row_its_own_defaults_over_both_ladders() -> None:
    from bot.job_requests import RequestOptions, build_request
    from inference.requests import CompareStepsRequest, PlainRow

    few = limits().request_defaults(WITH_LORAS, ["lightning"])
    options = RequestOptions("a fox", grid=True, lora="lightning", lora_compare=True, seed=1)
    request = build_request(options, few)
    assert isinstance(request, CompareStepsRequest)
    assert (request.scheduler, request.guidance, request.loras) == ("Euler", 0.0, (("lightning", 1.0),))
    assert request.without_loras == PlainRow("Euler a", 7.5)
    # SD15's ladder and the LoRA's, spread to six columns (twelve cells in two rows).
    assert request.steps == (1, 3, 5, 8, 20, 50) and len(request.lane_steps) == 12
    # A scheduler or guidance given applies to both rows.
    both = build_request(dataclasses.replace(options, scheduler="DDIM", guidance=2.0), few)
    assert isinstance(both, CompareStepsRequest) and both.without_loras == PlainRow("DDIM", 2.0)
    assert (both.scheduler, both.guidance) == ("DDIM", 2.0)


def test_a_lora_comparison_over_the_servers_cell_limit_is_refused_saying_it_has_two_rows() -> None:
    from inference.requests import CompareStepsRequest, PlainRow

    request = CompareStepsRequest("a fox", steps=(1, 2, 4, 8), scheduler="Euler", guidance=0.0,
                                  loras=(("lightning", 1.0),), without_loras=PlainRow("Euler a", 7.5))  # fmt: skip
    assert str(refusal(request, limits(max_grid_cells=6))) == (
        "This server allows grids of at most 6 cells; you asked for 8 (two rows, without and with the LoRA, "
        "× 4 step counts): give fewer step counts."
    )
