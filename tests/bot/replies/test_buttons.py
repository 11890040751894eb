"""The persistent job buttons: custom ids that survive a restart, the buttons under each message."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, cast

import discord
import pytest

from bot.replies.buttons import CUSTOM_ID_PATTERN, JobButton, result_view
from inference.protocol import GenerateRequest, HiresFix
from tests.bot.fakes import COMPARE, IMAGINE, Harness, custom_ids, png_of, record_for

PNG_BYTES = png_of(256, 256)

JOB_ID = "0123456789abcdef0123456789abcdef"


def parse_custom_id(value: str) -> tuple[str, str] | None:
    """(action, job_id) of a job button's custom id, or None if it isn't one."""
    match = re.fullmatch(CUSTOM_ID_PATTERN, value)
    return (match["action"], match["job_id"]) if match else None


def buttons(view: discord.ui.View) -> list[discord.ui.Button[Any]]:
    return [cast(JobButton, item).item for item in view.children]


def button(view: discord.ui.View, action: str) -> discord.ui.Button[Any]:
    for candidate in buttons(view):
        if candidate.custom_id == f"stepgrid:{action}:{JOB_ID}":
            return candidate
    raise AssertionError(f"no {action} button")


# --- custom ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["reroll", "fewer", "more", "compare", "details", "cancel"])
def test_custom_ids_round_trip(action: str) -> None:
    assert parse_custom_id(f"stepgrid:{action}:{JOB_ID}") == (action, JOB_ID)


@pytest.mark.parametrize(
    "value", ["stepgrid:explode:abc", "other:reroll:abc", "stepgrid:reroll:", "stepgrid:reroll:a b"]
)
def test_foreign_custom_ids_are_not_ours(value: str) -> None:
    assert parse_custom_id(value) is None


def test_custom_ids_fit_discords_limit() -> None:
    assert len(f"stepgrid:details:{'x' * 64}") <= 100
    assert re.fullmatch(CUSTOM_ID_PATTERN, f"stepgrid:details:{'x' * 64}")


async def test_a_button_is_rebuilt_from_its_custom_id_alone() -> None:
    custom_id = f"stepgrid:reroll:{JOB_ID}"
    match = re.fullmatch(JobButton.__discord_ui_compiled_template__, custom_id)
    assert match is not None
    rebuilt = await JobButton.from_custom_id(
        cast(discord.Interaction, None), discord.ui.Button(custom_id=custom_id), match
    )
    assert (rebuilt.action, rebuilt.job_id) == ("reroll", JOB_ID)
    assert rebuilt.custom_id == custom_id


# --- the buttons under a result -----------------------------------------------------------------


async def test_an_image_result_has_reroll_step_compare_film_and_details_buttons() -> None:
    view = result_view(record_for(IMAGINE))
    assert view.timeout is None
    assert view.is_persistent()
    actions = ("reroll", "fewer", "more", "compare", "film", "vary", "vary-strong", "upscale", "details")
    assert custom_ids(view) == [f"stepgrid:{a}:{JOB_ID}" for a in actions]
    assert button(view, "film").label == "Steps film"


async def test_a_film_result_has_no_second_film_button() -> None:
    view = result_view(record_for(dataclasses.replace(IMAGINE, film=True)))
    assert f"stepgrid:film:{JOB_ID}" not in custom_ids(view)
    assert button(view, "fewer").label == "15 steps"
    assert button(view, "more").label == "25 steps"


@pytest.mark.parametrize(
    ("kind", "request_"),
    [
        ("text2img", GenerateRequest("x", width=512, height=512)),
        ("img2img", GenerateRequest("x", width=512, height=512, image=PNG_BYTES, strength=0.6)),
        ("vary", GenerateRequest("x", width=512, height=512, image=PNG_BYTES, strength=0.35)),
        ("upscale", GenerateRequest("x", width=384, height=384, image=PNG_BYTES, strength=1.0, hires=HiresFix(8))),
    ],
)
async def test_every_one_image_result_offers_vary_and_upscale(kind: str, request_: GenerateRequest) -> None:
    ids = custom_ids(result_view(record_for(request_)))
    assert {f"stepgrid:{a}:{JOB_ID}" for a in ("vary", "vary-strong", "upscale")} <= set(ids), kind


async def test_upscale_is_not_offered_where_twice_the_result_is_more_than_any_worker_takes() -> None:
    upscaled = GenerateRequest("x", width=1024, height=1024, image=PNG_BYTES, strength=1.0, hires=HiresFix(8))
    ids = custom_ids(result_view(record_for(upscaled)))  # 2048x2048 now: 4096x4096 after another
    assert f"stepgrid:upscale:{JOB_ID}" not in ids and f"stepgrid:vary:{JOB_ID}" in ids


async def test_several_images_in_one_result_offer_no_vary_or_upscale() -> None:
    ids = custom_ids(result_view(record_for(dataclasses.replace(IMAGINE, count=4))))
    assert not {f"stepgrid:{a}:{JOB_ID}" for a in ("vary", "vary-strong", "upscale")} & set(ids)


async def test_a_grid_result_has_only_reroll_and_details() -> None:
    view = result_view(record_for(COMPARE))
    assert custom_ids(view) == [f"stepgrid:reroll:{JOB_ID}", f"stepgrid:details:{JOB_ID}"]


async def test_step_buttons_are_disabled_at_the_ends() -> None:
    assert button(result_view(record_for(GenerateRequest("x", steps=1))), "fewer").disabled
    assert button(result_view(record_for(GenerateRequest("x", steps=1))), "fewer").label == "1 step"
    assert button(result_view(record_for(GenerateRequest("x", steps=150))), "more").disabled


async def test_more_steps_stops_at_the_ceiling_it_is_given() -> None:
    at_ceiling = result_view(record_for(GenerateRequest("x", steps=20)), max_steps=20)
    assert button(at_ceiling, "more").disabled and button(at_ceiling, "more").label == "20 steps"
    below = result_view(record_for(GenerateRequest("x", steps=12)), max_steps=20)
    assert not button(below, "more").disabled and button(below, "more").label == "15 steps"


async def test_a_button_error_goes_to_the_same_handler() -> None:
    harness = Harness()
    click = harness.interaction()
    await JobButton("reroll", "unknownjob").callback(click.as_interaction())
    (reply,) = click.recorder.calls
    assert reply.kind == "send_message" and reply.ephemeral
    assert "unknownjob" in (reply.content or "")
