"""Per-server defaults and limits, checked before a request is queued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.config import Settings
from bot.limits import EffectiveLimits, check_request
from inference.protocol import DEFAULT_SCHEDULER, GenerateRequest, Request

if TYPE_CHECKING:
    from bot.db import Database


@dataclass(frozen=True)
class RequestDefaults:
    """Values used for options the user left out."""

    steps: int = 30
    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = GenerateRequest.guidance
    width: int = 512
    height: int = 512


class RequestPolicy(Protocol):
    """Per-server defaults and limits; raising UserFacingError refuses a request before queueing."""

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        """Defaults for the server (or a DM when None)."""

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        """Raise a UserFacingError naming the limit if `request` is over one."""


class SettingsPolicy:
    """The operator's global defaults and ceilings from Settings (no per-server state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        return RequestDefaults(steps=self.settings.default_steps, scheduler=self.settings.default_scheduler)

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        # No ledger here to count a member's jobs or steps: only the per-request limits can bite.
        check_request(request, EffectiveLimits.combine(None, self.settings), steps_used_today=0, active_jobs=0)


class DatabasePolicy:
    """Each server's limits from the database, tightened to the operator's ceilings in Settings."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server (the operator's alone in DMs)."""
        server = await self.database.get_limits(guild_id) if guild_id is not None else None
        return EffectiveLimits.combine(server, self.settings)

    async def defaults(self, guild_id: int | None) -> RequestDefaults:
        limits = await self.limits(guild_id)
        return RequestDefaults(steps=limits.default_steps, scheduler=limits.default_scheduler)

    async def check(self, request: Request, *, guild_id: int | None, user_id: int) -> None:
        check_request(
            request,
            await self.limits(guild_id),
            steps_used_today=await self.database.steps_used_today(guild_id, user_id),
            active_jobs=await self.database.active_jobs(guild_id, user_id),
        )
