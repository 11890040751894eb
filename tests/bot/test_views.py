"""Messages, embeds, persistent buttons, command options and the one error handler."""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import discord
import pytest
from discord import app_commands

from bot.client import EXTENSIONS, Stepgrid
from bot.config import Settings
from bot.errors import InvalidOption, QueueBusy, report_error, user_message
from bot.jobs import ProgressState
from bot.store import JobRecord
from bot.views import (
    CUSTOM_ID_PATTERN,
    JobButton,
    details_embed,
    parameters_embed,
    progress_bar,
    progress_message,
    progress_text,
    result_view,
    size_autocomplete,
    step_down,
    step_up,
)
from inference.protocol import SCHEDULER_NAMES, CompareStepsRequest, GenerateRequest, InvalidRequest
from inference.queue import QueueFull
from tests.bot.test_jobs import COMPARE, IMAGINE, OWNER, FakeClock, FakeInteraction, Harness, Recorder, ScriptedQueue

JOB_ID = "0123456789abcdef0123456789abcdef"


def parse_custom_id(value: str) -> tuple[str, str] | None:
    """(action, job_id) of a job button's custom id, or None if it isn't one."""
    match = re.fullmatch(CUSTOM_ID_PATTERN, value)
    return (match["action"], match["job_id"]) if match else None


def record_of(request: GenerateRequest | CompareStepsRequest) -> JobRecord:
    return JobRecord(JOB_ID, request, OWNER, 42, 77, "imagine")


def buttons(view: discord.ui.View) -> list[discord.ui.Button[Any]]:
    return [cast(JobButton, item).item for item in view.children]


def custom_ids(view: discord.ui.View) -> list[str]:
    return [item.custom_id or "" for item in buttons(view)]


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


# --- views ------------------------------------------------------------------------------------


async def test_an_image_result_has_reroll_step_compare_and_details_buttons() -> None:
    view = result_view(record_of(IMAGINE))
    assert view.timeout is None
    assert view.is_persistent()
    assert custom_ids(view) == [f"stepgrid:{a}:{JOB_ID}" for a in ("reroll", "fewer", "more", "compare", "details")]
    assert button(view, "fewer").label == "15 steps"
    assert button(view, "more").label == "25 steps"


async def test_a_grid_result_has_only_reroll_and_details() -> None:
    view = result_view(record_of(COMPARE))
    assert custom_ids(view) == [f"stepgrid:reroll:{JOB_ID}", f"stepgrid:details:{JOB_ID}"]


async def test_step_buttons_are_disabled_at_the_ends() -> None:
    assert button(result_view(record_of(GenerateRequest("x", steps=1))), "fewer").disabled
    assert button(result_view(record_of(GenerateRequest("x", steps=150))), "more").disabled


def test_the_step_ladder_moves_one_rung() -> None:
    assert (step_down(30), step_up(30)) == (25, 40)
    assert (step_down(33), step_up(33)) == (30, 40)
    assert step_down(1) is None
    assert step_up(150) is None


# --- progress ---------------------------------------------------------------------------------


def test_progress_text_shows_the_queue_position() -> None:
    assert progress_text(IMAGINE, ProgressState(position=4)) == "⏳ Queued — position 4."


def test_progress_text_shows_step_k_of_n() -> None:
    state = ProgressState(started=True, lane_steps={0: 7}, job_step=7, job_total=20)
    assert "step 7/20" in progress_text(IMAGINE, state)


def test_progress_of_several_images_follows_the_slowest() -> None:
    request = GenerateRequest("x", steps=10, count=2)
    state = ProgressState(started=True, lane_steps={0: 6, 1: 5}, job_step=11, job_total=20)
    text = progress_text(request, state)
    assert "step 5/10" in text and "2 images" in text


def test_progress_of_a_grid_counts_cells_done() -> None:
    state = ProgressState(started=True, lane_steps={0: 5, 1: 10, 2: 12}, job_step=27, job_total=35)
    text = progress_text(COMPARE, state)
    assert "77%" in text and "2/3 cells done" in text and "longest cell at step 12/20" in text
    assert "27/35" not in text  # the sum of the cells' steps is no step count anyone asked for


def test_a_retry_is_announced() -> None:
    state = ProgressState(started=True, attempt=2)
    assert "attempt 2" in progress_text(IMAGINE, state)


def test_progress_bar_fills_in_proportion() -> None:
    assert progress_bar(0, 10, width=4) == "▱▱▱▱"
    assert progress_bar(5, 10, width=4) == "▰▰▱▱"
    assert progress_bar(10, 10, width=4) == "▰▰▰▰"


async def test_the_progress_message_shows_the_preview_and_a_cancel_button() -> None:
    message = progress_message(record_of(IMAGINE), ProgressState(started=True, preview_png=b"png"))
    assert [file.filename for file in message.files] == ["preview.png"]
    assert message.embeds[0].image.url == "attachment://preview.png"
    assert message.view is not None
    assert custom_ids(message.view) == [f"stepgrid:cancel:{JOB_ID}"]


# --- embeds -----------------------------------------------------------------------------------


def test_the_parameters_embed_lists_every_parameter() -> None:
    request = GenerateRequest("a fox", steps=12, scheduler="DDIM", seed=5, guidance=4.5, width=768, height=512)
    request = GenerateRequest(**{**request.__dict__, "negative_prompt": "blurry", "count": 2})
    fields = {field.name: field.value for field in parameters_embed(request).fields}
    assert fields == {
        "Steps": "12",
        "Seeds": "5, 6",
        "Scheduler": "DDIM",
        "Guidance": "4.5",
        "Size": "768×512",
        "Images": "2",
        "Negative prompt": "blurry",
    }


def test_an_overlong_prompt_is_clipped_to_fit_an_embed() -> None:
    embed = parameters_embed(GenerateRequest("word " * 2000))
    assert embed.description is not None and len(embed.description) <= 4000


def test_details_name_who_asked() -> None:
    fields = {field.name: field.value for field in details_embed(record_of(COMPARE)).fields}
    assert fields["Requested by"] == f"<@{OWNER}>"
    assert fields["Steps"] == "5, 10, 20"


# --- command options --------------------------------------------------------------------------


async def test_size_autocomplete_filters_common_sizes() -> None:
    choices = await size_autocomplete(cast(discord.Interaction, None), "76")
    assert [choice.value for choice in choices] == ["768x512", "768"]
    assert choices[0].name == "768 × 512"


async def make_bot() -> Stepgrid:
    bot = Stepgrid(Settings(_env_file=None), queue=ScriptedQueue(), sync_commands=False)  # type: ignore[call-arg]
    await bot.setup_hook()
    return bot


async def test_setup_hook_starts_the_queue_and_loads_every_command() -> None:
    bot = await make_bot()
    try:
        assert cast(ScriptedQueue, bot.queue).started
        assert sorted(command.name for command in bot.tree.get_commands()) == [
            "compare-steps", "imagine", "limits", "limits-reset", "limits-set", "usage", "usage-server",
        ]  # fmt: skip
        assert sorted(bot.extensions) == sorted(EXTENSIONS)
    finally:
        await bot.close()
    assert cast(ScriptedQueue, bot.queue).closed


async def test_the_commands_offer_every_scheduler_and_bounded_numbers() -> None:
    bot = await make_bot()
    try:
        imagine = bot.tree.get_command("imagine")
        assert isinstance(imagine, app_commands.Command)
        options = {option["name"]: option for option in imagine.to_dict(bot.tree)["options"]}
        assert [choice["value"] for choice in options["scheduler"]["choices"]] == list(SCHEDULER_NAMES)
        assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 150)
        assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
        assert options["size"]["autocomplete"] is True
        assert options["prompt"]["required"] is True
        compare = bot.tree.get_command("compare-steps")
        assert isinstance(compare, app_commands.Command)
        names = [option["name"] for option in compare.to_dict(bot.tree)["options"]]
        assert names == ["prompt", "steps", "scheduler", "seed", "negative_prompt", "guidance", "size"]
    finally:
        await bot.close()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidOption("steps must be 1 to 150; got 500."), "steps must be 1 to 150; got 500."),
        (QueueBusy("The queue is full."), "The queue is full."),
        (InvalidRequest("guidance must be 0 to 30; got 31."), "guidance must be 0 to 30; got 31."),
        (QueueFull(100, 100), "The queue is full (100 of 100 jobs waiting); try again in a minute."),
        (app_commands.MissingPermissions(["manage_guild"]), "You need the manage guild permission to do that."),
        (app_commands.NoPrivateMessage(), "This command works only in a server."),
        (app_commands.CheckFailure(), "You can't use this command here."),
    ],
)
def test_expected_errors_become_short_messages(error: Exception, expected: str) -> None:
    assert user_message(error) == expected


@app_commands.command(name="probe", description="A command to wrap errors with.")
async def probe(interaction: discord.Interaction) -> None:
    """Never run; errors need a command to name."""


def test_a_wrapped_user_error_is_unwrapped() -> None:
    command = cast(app_commands.Command[Any, Any, Any], probe)
    wrapped = app_commands.CommandInvokeError(command, InvalidOption("size must be 512 or 768x512."))
    assert user_message(wrapped) == "size must be 512 or 768x512."


def test_a_bug_has_no_user_message() -> None:
    assert user_message(ZeroDivisionError("oops")) is None


async def test_a_user_error_is_answered_ephemerally() -> None:
    interaction = FakeInteraction(Recorder(FakeClock()))
    await report_error(interaction.as_interaction(), InvalidOption("Nope."))
    (reply,) = interaction.recorder.calls
    assert (reply.kind, reply.content, reply.ephemeral) == ("send_message", "Nope.", True)


async def test_a_bug_is_logged_with_the_reference_the_user_sees(caplog: pytest.LogCaptureFixture) -> None:
    interaction = FakeInteraction(Recorder(FakeClock()))
    await interaction.response.defer(thinking=True)
    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        await report_error(interaction.as_interaction(), ZeroDivisionError("oops"))
    reply = interaction.recorder.calls[-1]
    assert reply.kind == "followup" and reply.ephemeral
    reference = re.search(r"ref `(\w+)`", reply.content or "")
    assert reference is not None
    (logged,) = [record for record in caplog.records if record.name == "bot.errors"]
    assert reference.group(1) in logged.getMessage()
    assert logged.exc_info is not None and logged.exc_info[0] is ZeroDivisionError


async def test_the_tree_error_handler_answers_command_errors() -> None:
    bot = await make_bot()
    try:
        interaction = FakeInteraction(Recorder(FakeClock()))
        command = cast(app_commands.Command[Any, Any, Any], bot.tree.get_command("imagine"))
        error = app_commands.CommandInvokeError(command, QueueBusy("The queue is full; try again in a minute."))
        await bot.tree.on_error(cast(discord.Interaction[Stepgrid], interaction), error)
        (reply,) = interaction.recorder.calls
        assert reply.ephemeral and reply.content == "The queue is full; try again in a minute."
    finally:
        await bot.close()


async def test_a_button_error_goes_to_the_same_handler() -> None:
    harness = Harness()
    click = harness.interaction()
    await JobButton("reroll", "unknownjob").callback(click.as_interaction())
    (reply,) = click.recorder.calls
    assert reply.kind == "send_message" and reply.ephemeral
    assert "unknownjob" in (reply.content or "")
