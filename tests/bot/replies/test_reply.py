"""A job's one message: the interaction's response while its token lives, then the channel."""

from __future__ import annotations

from typing import cast

import discord

from bot.replies.messages import MessageUpdate
from bot.replies.reply import InteractionMessage, StoredInteractionMessage
from inference.requests import GenerateRequest
from tests.bot.fakes import OWNER, FakeClient, FakeClock, FakeInteraction, Recorder, record_for

UPDATE = MessageUpdate(content="step 3/20")


def live(deadline: float = 840.0) -> tuple[InteractionMessage, FakeInteraction, FakeClock]:
    clock = FakeClock()
    interaction = FakeInteraction(Recorder(clock))
    target = InteractionMessage(interaction.as_interaction(), owner_id=OWNER, deadline=clock() + deadline, clock=clock)
    return target, interaction, clock


async def test_while_the_token_lives_the_interactions_message_is_edited() -> None:
    target, interaction, _ = live()
    await target.show(UPDATE)
    assert [(call.kind, call.content) for call in interaction.recorder.calls] == [("edit", "step 3/20")]
    assert not target.on_channel


async def test_after_the_deadline_the_message_goes_to_the_channel_with_a_mention() -> None:
    target, interaction, clock = live(deadline=10.0)
    clock.now += 10.0
    await target.show(UPDATE)
    await target.show(MessageUpdate(content="done"))
    calls = interaction.recorder.calls
    assert [call.kind for call in calls] == ["channel_send", "channel_edit"]
    assert calls[0].content == f"<@{OWNER}> step 3/20"
    mentions = calls[0].options["allowed_mentions"]
    assert isinstance(mentions, discord.AllowedMentions) and mentions.everyone is False


async def test_a_dead_token_moves_the_message_to_the_channel_for_good() -> None:
    target, interaction, _ = live()
    interaction.token_dead = True
    await target.show(UPDATE)
    assert target.on_channel
    assert [call.kind for call in interaction.recorder.calls] == ["channel_send"]


async def test_withdrawing_tells_the_owner_privately_while_the_token_lives() -> None:
    target, interaction, _ = live()
    await target.withdraw("Your image could not be made.")
    calls = interaction.recorder.calls
    assert [(call.kind, call.ephemeral) for call in calls] == [("delete", False), ("followup", True)]
    assert calls[1].content == "Your image could not be made."


async def test_a_job_stored_without_its_interaction_answers_in_the_channel() -> None:
    clock = FakeClock()
    recorder = Recorder(clock)
    client = cast(discord.Client, FakeClient(recorder))
    record = record_for(GenerateRequest("fox"))  # no application id, token or message id
    target = StoredInteractionMessage(client, record, deadline=clock() + 840.0, clock=clock)
    assert target.on_channel
    await target.show(UPDATE)
    await target.withdraw("It was cancelled.")
    assert [call.kind for call in recorder.calls] == ["channel_send", "channel_delete", "channel_send"]
    assert recorder.calls[-1].content == f"<@{OWNER}> It was cancelled."
