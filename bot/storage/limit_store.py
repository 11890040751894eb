"""Each server's own limits in the database, and the audit trail of who changed them.

Commands read their server's limits before they are acknowledged (Discord drops an interaction not
answered within 3 s), so `current_limits` answers from a snapshot of every server's limits (one small
table read at once), refreshed when it is older than SNAPSHOT_SECONDS; this process's own changes go into
it at once. Another bot process's change to a server reaches this one within SNAPSHOT_SECONDS (servers are
changed through the shard that owns them, so that is only after a shard moved).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bot.limits.changes import validate_limit_changes
from bot.limits.server import LIMIT_FIELDS, ServerLimits
from bot.storage.models import GuildLimits, LimitsChange
from bot.storage.writer import DatabaseWriter

SNAPSHOT_SECONDS = 5.0  # how old the snapshot of every server's limits may be before it is read again


class LimitStorage:
    """Read, change (validated, audited) and reset a server's limits."""

    def __init__(self, database: DatabaseWriter, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self._clock = clock
        self._snapshot: dict[int, ServerLimits] | None = None
        self._snapshot_at = 0.0
        self._changes = 0  # this process's changes so far: a snapshot read during one is not kept
        self._reading = asyncio.Lock()

    async def get_limits(self, guild_id: int) -> ServerLimits:
        """The server's own limits (all None when it never set any), read from the database now."""
        async with self.database.sessions() as session:
            return _server_limits(await session.get(GuildLimits, guild_id))

    async def current_limits(self, guild_id: int) -> ServerLimits:
        """The server's own limits from the snapshot (read again when older than SNAPSHOT_SECONDS)."""
        if self._snapshot is None or self._clock() - self._snapshot_at >= SNAPSHOT_SECONDS:
            async with self._reading:  # one read of the table however many commands arrive together
                if self._snapshot is None or self._clock() - self._snapshot_at >= SNAPSHOT_SECONDS:
                    await self._read_snapshot()
        assert self._snapshot is not None
        return self._snapshot.get(guild_id) or ServerLimits()

    async def _read_snapshot(self) -> None:
        while True:  # again if this process changed a server's limits meanwhile: what was read may predate it
            changes, read_at = self._changes, self._clock()
            async with self.database.sessions() as session:
                rows = list(await session.scalars(sa.select(GuildLimits)))
            if changes == self._changes:
                self._snapshot = {row.guild_id: _server_limits(row) for row in rows}
                self._snapshot_at = read_at
                return

    async def set_limits(self, guild_id: int, user_id: int, **changes: Any) -> ServerLimits:
        """Validate and apply `/limits set` changes, one audit row per field that changed.

        Raises InvalidLimit (a UserFacingError) naming the field and allowed range; then nothing changes.
        """
        now = self.database.clock()

        async def operation(session: AsyncSession) -> ServerLimits:
            # Locked (PostgreSQL's FOR UPDATE) and validated inside the writer's transaction, so two admins
            # can't interleave, even from two bot processes.
            row = await session.get(GuildLimits, guild_id, with_for_update=True, populate_existing=True)
            normalised = validate_limit_changes(changes, _server_limits(row), self.database.settings)
            return await _apply_limits(session, row, guild_id, user_id, normalised, now)

        limits = await self.database.write(operation)
        self._changes += 1
        if self._snapshot is not None:
            self._snapshot[guild_id] = limits
        return limits

    async def reset_limits(self, guild_id: int, user_id: int, fields: Iterable[str] | None = None) -> ServerLimits:
        """Put `fields` (default: all) back to the operator's values; audited like `set_limits`."""
        names = tuple(fields) if fields is not None else LIMIT_FIELDS
        return await self.set_limits(guild_id, user_id, **dict.fromkeys(names))

    async def limits_history(self, guild_id: int, *, limit: int = 50) -> list[LimitsChange]:
        """The server's most recent limit changes, newest first."""
        query = (
            sa.select(LimitsChange)
            .where(LimitsChange.guild_id == guild_id)
            .order_by(LimitsChange.changed_at.desc(), LimitsChange.id.desc())
            .limit(limit)
        )
        async with self.database.sessions() as session:
            return list(await session.scalars(query))


def _server_limits(row: GuildLimits | None) -> ServerLimits:
    if row is None:
        return ServerLimits()
    values = {name: getattr(row, name) for name in LIMIT_FIELDS}
    for name in ("allowed_schedulers", "banned_words", "allowed_models", "allowed_loras"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    if values["model_max_steps"] is not None:
        values["model_max_steps"] = tuple((str(name), int(steps)) for name, steps in values["model_max_steps"].items())
    return ServerLimits(**values)


def _json_value(name: str, value: Any) -> Any:
    if name == "model_max_steps" and value is not None:
        return dict(value)  # {model: ceiling}, in the registry's order
    return list(value) if isinstance(value, tuple) else value


async def _apply_limits(
    session: AsyncSession,
    row: GuildLimits | None,
    guild_id: int,
    user_id: int,
    changes: dict[str, Any],
    now: datetime,
) -> ServerLimits:
    if row is None:
        row = GuildLimits(guild_id=guild_id)
        session.add(row)
        await session.flush()  # the audit rows reference it
    for name, new in changes.items():
        old = getattr(row, name)
        new = _json_value(name, new)
        if old == new:
            continue
        setattr(row, name, new)
        session.add(
            LimitsChange(guild_id=guild_id, user_id=user_id, field=name, old_value=old, new_value=new, changed_at=now)
        )
        row.updated_at = now
        row.updated_by = user_id
    return _server_limits(row)
