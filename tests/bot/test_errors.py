"""The one error handler: expected errors become short ephemeral replies, bugs a logged reference."""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import discord
import pytest
from discord import app_commands

from bot.errors import InvalidOption, QueueBusy, report_error, user_message
from inference.queues.base import QueueFull
from inference.requests import InvalidRequest
from tests.bot.fakes import FakeClock, FakeInteraction, Recorder


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
