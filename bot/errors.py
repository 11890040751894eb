"""Errors a user can fix or must be told about, and the one place that turns errors into replies.

Cogs and buttons raise `UserFacingError` subclasses; `report_error` (called by `tree.on_error`
and by button callbacks) answers them with a short ephemeral message. Anything else is a bug:
it is logged with a reference id, and the user sees that id.
"""

from __future__ import annotations

import logging
import secrets

import discord
from discord import app_commands

from inference.clipping import clip, echo
from inference.protocol import SAFETY_CHECKER_FAILED
from inference.queues.base import QueueFull
from inference.requests import InvalidRequest

log = logging.getLogger(__name__)

# Discord refuses a message whose content is longer than this (the member then sees "The
# application did not respond"), so every reply is clipped to it.
MAX_CONTENT = 2000


class UserFacingError(Exception):
    """A mistake or refusal shown to the user as a short ephemeral message saying what to do."""


class ServerOnly(UserFacingError):
    """A command or button used outside a server (a DM): server limits can't apply there."""

    def __init__(self) -> None:
        super().__init__("This works only in a server: use Stepgrid in a server channel, not in direct messages.")


class InvalidOption(UserFacingError):
    """An option value the bot can't use (out of range, malformed, unknown)."""


class QueueBusy(UserFacingError):
    """The job queue is full; nothing was queued."""


class Restarting(UserFacingError):
    """The bot is stopping for a restart (a deploy); nothing was queued."""

    def __init__(self) -> None:
        super().__init__("Stepgrid is restarting; try again in a minute.")


class ModelUnavailable(UserFacingError):
    """The GPU worker cannot load its model at all; only the operator can fix that."""

    def __init__(self, why: str | None = None) -> None:
        if why is not None and why.startswith(SAFETY_CHECKER_FAILED):
            super().__init__(
                "Image generation is unavailable: the image safety checker failed to load, and no picture is "
                "posted unchecked. Please tell the bot's operator."
            )
            return
        super().__init__("Image generation is unavailable: the model failed to load. Please tell the bot's operator.")


class JobNotFound(UserFacingError):
    """A button refers to a job this server has no record of (another server's, or no longer stored).

    The two read the same, so a job's footer id tells nothing about other servers.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"I know no job `{job_id}` in this server (a job's buttons work only where it was made); "
            "run the command again instead."
        )
        self.job_id = job_id


class DuplicateRequest(UserFacingError):
    """The member already has this very request queued or running; a second copy would only repeat it."""

    def __init__(self) -> None:
        super().__init__("You already have this exact job queued or running; its result will appear in its message.")


class DatabaseBusy(UserFacingError):
    """Every database connection this process may open stayed busy for the pool's whole wait."""

    def __init__(self) -> None:
        super().__init__("The bot's database is too busy right now; try again in a minute.")


class NotYourJob(UserFacingError):
    """Someone tried to cancel another member's job."""

    def __init__(self) -> None:
        super().__init__("Only the member who started this job (or a moderator) can cancel it.")


def new_reference() -> str:
    """A short id that ties what a user sees to a log line."""
    return secrets.token_hex(4)


def user_message(error: BaseException) -> str | None:
    """The short reply for an expected error, or None for a bug."""
    if isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        if isinstance(error, app_commands.TransformerError):
            return f"Could not read {echo(error.value)}: check that option and try again."
        error = error.original
    if isinstance(error, UserFacingError | InvalidRequest | QueueFull):
        return str(error)
    if isinstance(error, app_commands.CommandSignatureMismatch):
        # A client that sent options the synced command doesn't have (or left a required one out).
        return "That command arrived with options it doesn't have; run it again from Discord's command list."
    if isinstance(error, app_commands.MissingPermissions):
        needed = ", ".join(name.replace("_", " ") for name in error.missing_permissions)
        return f"You need the {needed} permission to do that."
    if isinstance(error, app_commands.BotMissingPermissions):
        needed = ", ".join(name.replace("_", " ") for name in error.missing_permissions)
        return f"I need the {needed} permission in this channel; ask a server admin."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works only in a server."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    return None


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer `error` with a short ephemeral message; log unexpected ones with a reference id."""
    message = user_message(error)
    if message is None:
        reference = new_reference()
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        log.error(
            "unexpected error (ref %s) in interaction %s from user %s",
            reference,
            _interaction_name(interaction),
            interaction.user.id,
            exc_info=original,
        )
        message = f"Something went wrong on my side (ref `{reference}`). It has been logged; try again later."
    else:
        log.info("refused %s for user %s: %s", _interaction_name(interaction), interaction.user.id, message)
    await send_ephemeral(interaction, message)


async def send_ephemeral(interaction: discord.Interaction, message: str) -> None:
    """Reply only the user sees, whether or not the interaction was answered already (clipped to Discord's limit)."""
    message = clip(message, MAX_CONTENT)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not send an error reply to interaction %s", interaction.id, exc_info=True)


def _interaction_name(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    custom_id = interaction.data.get("custom_id") if interaction.data else None
    return str(custom_id or interaction.type.name)
