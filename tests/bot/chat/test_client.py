"""The bot: setup_hook starts the queue and loads every command; the tree's one error handler."""

from __future__ import annotations

import logging
from typing import Any, cast

import discord
import pytest
from discord import app_commands

from bot.chat.client import EXTENSIONS, Stepgrid
from bot.config import Settings
from bot.errors import QueueBusy
from tests.bot.fakes import FakeClock, FakeInteraction, Recorder, ScriptedQueue


async def make_bot() -> Stepgrid:
    bot = Stepgrid(Settings(_env_file=None), queue=ScriptedQueue(), sync_commands=False)  # type: ignore[call-arg]
    await bot.__aenter__()  # as every start does (`async with bot`): an AutoShardedBot's close needs it
    await bot.setup_hook()
    return bot


def test_starting_logs_no_warning_about_voice_which_the_bot_never_uses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)  # as in a fresh process without PyNaCl
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    Stepgrid(Settings(_env_file=None), queue=ScriptedQueue(), sync_commands=False)  # type: ignore[call-arg]
    assert [record.message for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_setup_hook_starts_the_queue_and_loads_every_command() -> None:
    bot = await make_bot()
    try:
        assert cast(ScriptedQueue, bot.queue).started
        assert sorted(command.name for command in bot.tree.get_commands()) == [
            "compare-guidance", "compare-schedulers", "compare-steps", "compare-strength", "imagine", "limits",
            "limits-reset", "limits-set", "sweet-spots", "usage", "usage-server",
        ]  # fmt: skip
        assert sorted(bot.extensions) == sorted(EXTENSIONS)
    finally:
        await bot.close()
    assert cast(ScriptedQueue, bot.queue).closed


async def test_the_commands_offer_a_model_schedulers_by_autocomplete_and_bounded_numbers() -> None:
    bot = await make_bot()
    try:
        imagine = bot.tree.get_command("imagine")
        assert isinstance(imagine, app_commands.Command)
        options = {option["name"]: option for option in imagine.to_dict(bot.tree)["options"]}
        # The schedulers depend on the chosen model: autocomplete, not a fixed list of choices.
        assert options["scheduler"]["autocomplete"] is True and "choices" not in options["scheduler"]
        assert options["model"]["autocomplete"] is True and options["model"]["required"] is False
        assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 150)
        assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
        assert options["size"]["autocomplete"] is True
        assert options["prompt"]["required"] is True
        compare = bot.tree.get_command("compare-steps")
        assert isinstance(compare, app_commands.Command)
        names = [option["name"] for option in compare.to_dict(bot.tree)["options"]]
        assert names == ["prompt", "steps", "scheduler", "seed", "negative_prompt", "guidance", "size", "model",
                         "lora", "lora_weight", "image", "strength", "lora_compare", "stop_early", "seeds"]  # fmt: skip
        assert options["lora"]["autocomplete"] is True
        assert (options["lora_weight"]["min_value"], options["lora_weight"]["max_value"]) == (-2, 2)
    finally:
        await bot.close()


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


async def test_every_option_description_reads_as_words_not_code() -> None:
    bot = await make_bot()
    try:
        commands = [c for c in bot.tree.walk_commands() if isinstance(c, app_commands.Command)]
        for command in commands:
            for option in command.to_dict(bot.tree).get("options", []):
                description = option["description"]
                assert description[:1].isupper(), (command.name, option["name"], description)
                assert "shared." not in description and "_" not in description.split()[0], (command.name, description)
    finally:
        await bot.close()
