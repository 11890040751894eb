"""The persistent job buttons: custom ids that survive a restart, the buttons under each message."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, cast

import discord
import pytest

from bot.replies.buttons import CUSTOM_ID_PATTERN, CellMenu, JobButton, cell_menu_id, custom_id, result_view
from inference.requests import (
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    HiresFix,
    PlainRow,
    Request,
)
from tests.bot.fakes import COMPARE, IMAGINE, Harness, custom_ids, png_of, record_for

PNG_BYTES = png_of(256, 256)

JOB_ID = "0123456789abcdef0123456789abcdef"


def parse_custom_id(value: str) -> tuple[str, str] | None:
    """(action, job_id) of a job button's custom id, or None if it isn't one."""
    match = re.fullmatch(CUSTOM_ID_PATTERN, value)
    return (match["action"], match["job_id"]) if match else None


def buttons(view: discord.ui.View) -> list[discord.ui.Button[Any]]:
    return [item.item for item in view.children if isinstance(item, JobButton)]


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
    longest = custom_id("vary-strong", "x" * 64, 12)
    assert len(longest) <= 100 and re.fullmatch(CUSTOM_ID_PATTERN, longest)
    assert len(cell_menu_id("vary-strong", "x" * 64)) <= 100


@pytest.mark.parametrize(
    "value", [f"stepgrid:vary:{JOB_ID}:0", f"stepgrid:vary:{JOB_ID}:123", f"stepgrid:vary:{JOB_ID}:"]
)
def test_image_numbers_are_1_to_99(value: str) -> None:
    assert re.fullmatch(CUSTOM_ID_PATTERN, value) is None


async def test_an_image_button_is_rebuilt_with_its_image_number() -> None:
    value = custom_id("vary-strong", JOB_ID, 3)
    assert value == f"stepgrid:vary-strong:{JOB_ID}:3"
    match = re.fullmatch(JobButton.__discord_ui_compiled_template__, value)
    assert match is not None
    rebuilt = await JobButton.from_custom_id(cast(discord.Interaction, None), discord.ui.Button(custom_id=value), match)
    assert (rebuilt.action, rebuilt.job_id, rebuilt.number) == ("vary-strong", JOB_ID, 3)
    assert rebuilt.custom_id == value


async def test_a_cell_menu_is_rebuilt_from_its_custom_id_alone() -> None:
    value = cell_menu_id("upscale", JOB_ID)
    match = re.fullmatch(CellMenu.__discord_ui_compiled_template__, value)
    assert match is not None and re.fullmatch(CUSTOM_ID_PATTERN, value) is None
    rebuilt = await CellMenu.from_custom_id(cast(discord.Interaction, None), discord.ui.Select(custom_id=value), match)
    assert (rebuilt.action, rebuilt.job_id, rebuilt.custom_id) == ("upscale", JOB_ID, value)


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


def image_ids(view: discord.ui.View, action: str) -> list[str]:
    return [cid for cid in custom_ids(view) if cid.startswith(f"stepgrid:{action}:{JOB_ID}:")]


@pytest.mark.parametrize("count", [2, 3, 4])
async def test_several_images_offer_vary_and_upscale_per_image(count: int) -> None:
    view = result_view(record_for(dataclasses.replace(IMAGINE, count=count)))
    for action in ("vary", "vary-strong", "upscale"):
        assert image_ids(view, action) == [f"stepgrid:{action}:{JOB_ID}:{n}" for n in range(1, count + 1)]
    assert f"stepgrid:vary:{JOB_ID}" not in custom_ids(view), "no button without an image number"
    labels = [cast(JobButton, item).item.label for item in view.children if cast(JobButton, item).number == 2]
    assert labels == ["V2 subtle", "V2 strong", "U2 ×2"]
    rows = view.to_components()
    assert len(rows) <= 5 and all(len(row["components"]) <= 5 for row in rows), "Discord's 5 rows of 5"
    assert [len(row["components"]) for row in rows[-3:]] == [count] * 3, "a row per action, a button per image"


async def test_several_images_too_big_to_upscale_offer_only_vary() -> None:
    big = GenerateRequest("x", width=1536, height=1536, count=2)
    view = result_view(record_for(big))
    assert image_ids(view, "upscale") == [] and len(image_ids(view, "vary-strong")) == 2


def menus(view: discord.ui.View) -> dict[str, discord.ui.Select[Any]]:
    return {item.action: item.item for item in view.children if isinstance(item, CellMenu)}


async def test_a_grid_result_has_a_menu_of_its_cells_per_vary_and_upscale() -> None:
    view = result_view(record_for(COMPARE))
    assert custom_ids(view)[:2] == [f"stepgrid:reroll:{JOB_ID}", f"stepgrid:details:{JOB_ID}"]
    by_action = menus(view)
    assert list(by_action) == ["vary", "vary-strong", "upscale"]
    for action, menu in by_action.items():
        assert menu.custom_id == f"stepgrid:cells:{action}:{JOB_ID}"
        assert [(o.label, o.value) for o in menu.options] == [("5 steps", "1"), ("10 steps", "2"), ("20 steps", "3")]
    assert by_action["upscale"].placeholder == "🔍 Upscale ×2 a cell…"
    assert len(view.to_components()) == 4


@pytest.mark.parametrize(
    ("request_", "labels"),
    [
        (
            CompareSchedulersRequest("x", schedulers=("Euler", "DPM++ 2M"), steps=(5, 20)),
            ["Euler · 5 steps", "Euler · 20 steps", "DPM++ 2M · 5 steps", "DPM++ 2M · 20 steps"],
        ),
        (
            CompareStrengthRequest("x", image=PNG_BYTES, strengths=(0.3, 0.6), steps=(10, 30)),
            [
                "strength 0.3 · 10 steps",
                "strength 0.6 · 10 steps",
                "strength 0.3 · 30 steps",
                "strength 0.6 · 30 steps",
            ],
        ),
        (CompareGuidanceRequest("x", guidances=(3.0, 7.5), steps=(30,)), ["CFG 3 · 30 steps", "CFG 7.5 · 30 steps"]),
        (
            CompareStepsRequest("x", steps=(4, 8), loras=(("lcm", 1.0),), without_loras=PlainRow("Euler a", 7.5)),
            ["without lcm · 4 steps", "without lcm · 8 steps", "with lcm · 4 steps", "with lcm · 8 steps"],
        ),
        (
            CompareStepsRequest("x", seed=7, steps=(4, 8), seeds=2),
            ["seed 7 · 4 steps", "seed 7 · 8 steps", "seed 8 · 4 steps", "seed 8 · 8 steps"],
        ),
    ],
)
async def test_grid_cells_are_named_by_what_sets_each_apart(request_: Request, labels: list[str]) -> None:
    menu = menus(result_view(record_for(request_)))["vary"]
    assert [option.label for option in menu.options] == labels
    assert [option.value for option in menu.options] == [str(n) for n in range(1, len(labels) + 1)]


async def test_withheld_cells_are_left_out_of_the_menus_and_keep_their_numbers() -> None:
    view = result_view(record_for(COMPARE), leave_out={1})
    assert [(o.label, o.value) for o in menus(view)["vary"].options] == [("5 steps", "1"), ("20 steps", "3")]
    assert menus(result_view(record_for(COMPARE), leave_out={0, 1, 2})) == {}, "no menu when no cell was posted"


async def test_a_grid_too_big_to_upscale_has_no_upscale_menu() -> None:
    big = CompareStepsRequest("x", steps=(5, 10), width=1536, height=1536)
    assert list(menus(result_view(record_for(big)))) == ["vary", "vary-strong"]


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
