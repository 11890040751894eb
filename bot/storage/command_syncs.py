"""What slash commands were last synced to each scope: the hash the bot compares before syncing again."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import CommandSync
from bot.storage.writer import DatabaseWriter


class CommandSyncs:
    """Read and remember the hash of the command payload last synced to a scope."""

    def __init__(self, database: DatabaseWriter) -> None:
        self.database = database

    async def last_synced(self, scope: str) -> str | None:
        """The SHA-256 of what was last synced to `scope`; None if it never was."""
        async with self.database.sessions() as session:
            row = await session.get(CommandSync, scope)
            return None if row is None else row.payload_sha256

    async def remember(self, scope: str, payload_sha256: str) -> None:
        """Record a sync that Discord accepted."""
        now = self.database.clock()

        async def operation(session: AsyncSession) -> None:
            await session.merge(CommandSync(scope=scope, payload_sha256=payload_sha256, synced_at=now))

        await self.database.write(operation)
