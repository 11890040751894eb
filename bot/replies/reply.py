"""Where a job's one message lives: the interaction's response while its token lives, else the channel."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, cast

import discord

from bot.errors import MAX_CONTENT
from bot.replies.buttons import custom_id
from bot.replies.messages import MessageUpdate
from bot.replies.screening import channel_is_age_restricted
from bot.replies.throttle import MonotonicClock
from inference.clipping import clip

if TYPE_CHECKING:
    from bot.storage.job_store import JobRecord

log = logging.getLogger(__name__)

# Webhook errors that mean the interaction token is dead.
_DEAD_TOKEN_CODES = {10015, 50027, 10062}
UNKNOWN_MESSAGE = 10008
# What a webhook route takes for an interaction's first response when its message id is not known.
ORIGINAL = "@original"


class JobMessage:
    """The job's one message: the interaction's response until its token dies, then the channel.

    Subclasses say how to reach the interaction's response (a live interaction, or the webhook of
    one stored before a restart); the fallback to the channel is shared.
    """

    def __init__(
        self, client: discord.Client, *, owner_id: int, channel_id: int | None, guild_id: int | None,
        deadline: float, clock: MonotonicClock,
    ) -> None:  # fmt: skip
        self._client = client
        self._owner_id = owner_id
        self._channel_id = channel_id
        self._guild_id = guild_id
        self._deadline = deadline
        self._clock = clock
        self._token_dead = False
        self._channel_message: discord.Message | None = None

    @property
    def on_channel(self) -> bool:
        """True once messages go to the channel instead of the interaction webhook."""
        return self._token_dead or self._clock() >= self._deadline

    @property
    def attachment_limit(self) -> int:
        """The largest attachment this target accepts, in bytes."""
        limit = self._interaction_limit()
        guild = self._guild()
        return min(limit, guild.filesize_limit) if guild is not None and self.on_channel else limit

    def _interaction_limit(self) -> int:
        return discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    @property
    def age_restricted(self) -> bool:
        """Whether Discord marks the job's channel age-restricted now (a thread: its parent); not when unknown."""
        guild = self._guild()
        if guild is None or self._channel_id is None:
            return False
        return channel_is_age_restricted(guild.get_channel_or_thread(self._channel_id))

    def _guild(self) -> discord.Guild | None:
        return self._client.get_guild(self._guild_id) if self._guild_id is not None else None

    def _unreachable(self, error: discord.HTTPException) -> bool:
        """Whether a webhook error means the interaction's message can't be reached any more (then: the channel)."""
        return error.code in _DEAD_TOKEN_CODES

    async def _edit_original(self, update: MessageUpdate) -> None:
        raise NotImplementedError

    async def _delete_original(self) -> None:
        raise NotImplementedError

    async def _send_ephemeral(self, text: str) -> None:
        raise NotImplementedError

    async def show(self, update: MessageUpdate) -> None:
        """Make the job's message look like `update`."""
        if not self.on_channel:
            try:
                await self._edit_original(update)
                return
            except discord.HTTPException as error:
                if not self._unreachable(error):
                    raise
                log.info("the interaction token of %r is dead; posting to the channel", self)
                self._token_dead = True
        await self._show_in_channel(update)

    async def withdraw(self, text: str | None) -> None:
        """Remove the job's message; tell its owner `text` (when given) in a message only they see."""
        if not self.on_channel:
            with contextlib.suppress(discord.HTTPException):
                await self._delete_original()
            if text is None:
                return
            try:
                await self._send_ephemeral(text)
                return
            except discord.HTTPException as error:
                if not self._unreachable(error):
                    raise
                self._token_dead = True
        if self._channel_message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self._channel_message.delete()
            self._channel_message = None
        if text is not None:
            content = clip(f"<@{self._owner_id}> {text}", MAX_CONTENT)
            await self._channel().send(content, allowed_mentions=self._mentions())

    async def _show_in_channel(self, update: MessageUpdate) -> None:
        content = clip(f"<@{self._owner_id}> {update.content or ''}".rstrip(), MAX_CONTENT)
        files = [file.to_file() for file in update.files]
        if self._channel_message is None:
            self._channel_message = await self._channel().send(
                content=content,
                embeds=list(update.embeds),
                files=files,
                view=update.view or discord.utils.MISSING,
                allowed_mentions=self._mentions(),
            )
        else:
            self._channel_message = await self._channel_message.edit(
                content=content, embeds=list(update.embeds), attachments=files, view=update.view
            )

    def _channel(self) -> discord.PartialMessageable:
        if self._channel_id is None:
            raise RuntimeError("the job has no channel to post in")
        return self._client.get_partial_messageable(self._channel_id, guild_id=self._guild_id)

    def _mentions(self) -> discord.AllowedMentions:
        return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(self._owner_id)])


class InteractionMessage(JobMessage):
    """The message of a job started by an interaction this process received."""

    def __init__(
        self, interaction: discord.Interaction, *, owner_id: int, deadline: float, clock: MonotonicClock
    ) -> None:
        super().__init__(
            interaction.client, owner_id=owner_id, channel_id=interaction.channel_id,
            guild_id=interaction.guild_id, deadline=deadline, clock=clock,
        )  # fmt: skip
        self._interaction = interaction

    def __repr__(self) -> str:
        return f"<interaction {self._interaction.id}>"

    def _interaction_limit(self) -> int:
        return self._interaction.filesize_limit

    def _guild(self) -> discord.Guild | None:
        return self._interaction.guild

    async def _edit_original(self, update: MessageUpdate) -> None:
        await self._interaction.edit_original_response(
            content=update.content,
            embeds=list(update.embeds),
            attachments=[file.to_file() for file in update.files],
            view=update.view,
        )

    async def _delete_original(self) -> None:
        await self._interaction.delete_original_response()

    async def _send_ephemeral(self, text: str) -> None:
        await self._interaction.followup.send(clip(text, MAX_CONTENT), ephemeral=True)


class StoredInteractionMessage(JobMessage):
    """The message of a job accepted before a restart, reached through the stored interaction webhook.

    Without a stored token (or once the token is too old) it posts to the channel. A token without a message id
    (the bot died between its defer and the ledger's write of the message id) reaches the interaction's first
    response as `@original`; if Discord knows no such message (the defer never got there either), the channel.
    """

    def __init__(
        self, client: discord.Client, record: JobRecord, *, deadline: float, clock: MonotonicClock,
    ) -> None:  # fmt: skip
        usable = record.application_id is not None and bool(record.interaction_token)
        super().__init__(
            client, owner_id=record.user_id, channel_id=record.channel_id, guild_id=record.guild_id,
            deadline=deadline if usable else float("-inf"), clock=clock,
        )  # fmt: skip
        # discord.py puts the id into the webhook route as it is: "@original" is the interaction's first response.
        self._message_id = cast(int, record.message_id if record.message_id is not None else ORIGINAL)
        self._job_id = record.job_id
        self._webhook: discord.Webhook | None = None
        if usable:
            # What Interaction.followup builds: an application webhook bound to the client's state,
            # so that views with buttons may be attached.
            data = {"id": record.application_id, "type": 3, "token": record.interaction_token}
            self._webhook = discord.Webhook.from_state(data=data, state=client._connection)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<stored interaction of job {self._job_id}>"

    def _unreachable(self, error: discord.HTTPException) -> bool:
        return super()._unreachable(error) or (self._message_id == ORIGINAL and error.code == UNKNOWN_MESSAGE)

    def _hook(self) -> discord.Webhook:
        if self._webhook is None:  # pragma: no cover - on_channel is True then
            raise RuntimeError("no stored interaction")
        return self._webhook

    async def _edit_original(self, update: MessageUpdate) -> None:
        await self._hook().edit_message(
            self._message_id,
            content=update.content,
            embeds=list(update.embeds),
            attachments=[file.to_file() for file in update.files],
            view=update.view,
        )

    async def _delete_original(self) -> None:
        await self._hook().delete_message(self._message_id)

    async def _send_ephemeral(self, text: str) -> None:
        await self._hook().send(clip(text, MAX_CONTENT), ephemeral=True)

    async def shows_result(self) -> bool | None:
        """Whether the job's message already carries its result; None when it can't be read.

        A result message has the job's Details button, which no progress message has.
        """
        message: discord.Message
        try:
            if not self.on_channel:
                message = await self._hook().fetch_message(self._message_id)
            elif self._message_id != ORIGINAL and self._channel_id is not None:
                message = await self._channel().fetch_message(self._message_id)
            else:
                return None
        except discord.NotFound:
            return False
        except discord.HTTPException:
            log.info(
                "could not read the message of job %s to see whether it was delivered",
                self._job_id,
                extra={"job_id": self._job_id},
            )
            return None
        details = custom_id("details", self._job_id)
        return any(getattr(item, "custom_id", None) == details for item in _components(message.components))


def _components(components: list[discord.Component]) -> list[discord.Component]:
    found: list[discord.Component] = []
    for component in components:
        found.append(component)
        found.extend(_components(list(getattr(component, "children", []))))
    return found
