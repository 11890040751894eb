"""Where a server's limits come from, and the check of a request against them before it is queued.

A command reads its server's limits once (`RequestPolicy.limits`): the same `EffectiveLimits`
give the defaults for options left out and are what the request is checked against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from bot.config import Settings
from bot.errors import DuplicateRequest
from bot.limits.checks import check_request
from bot.limits.server import EffectiveLimits
from bot.storage.models import STEPS_NOTE, JobStatus, command_of, request_to_params
from bot.storage.sweet_spots import SweetSpot
from inference.requests import Request

if TYPE_CHECKING:
    from bot.storage.database import Database


class RequestPolicy(Protocol):
    """Per-server limits; raising UserFacingError refuses a request before queueing."""

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server (or a DM when None)."""

    async def check(self, request: Request, limits: EffectiveLimits, *, guild_id: int | None, user_id: int) -> None:
        """Raise a UserFacingError naming the limit if `request` is over one of `limits`."""

    async def sweet_spot(self, guild_id: int | None, model: str, scheduler: str) -> SweetSpot | None:
        """Where this server's grids of `model` × `scheduler` settle; None before any was remembered."""


class SettingsPolicy:
    """The operator's global defaults and ceilings from Settings (no per-server state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        return EffectiveLimits.combine(None, self.settings)

    async def check(self, request: Request, limits: EffectiveLimits, *, guild_id: int | None, user_id: int) -> None:
        # No ledger here to count a member's jobs or steps: only the per-request limits can bite.
        check_request(request, limits, steps_used_today=0, active_jobs=0)

    async def sweet_spot(self, guild_id: int | None, model: str, scheduler: str) -> SweetSpot | None:
        return None  # no ledger: nothing remembered


class DatabasePolicy:
    """Each server's limits from the database, tightened to the operator's ceilings in Settings."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server (the operator's alone in DMs), from the limits snapshot: read
        before a command is acknowledged, so most commands wait on no database here."""
        server = await self.database.server_limits.current_limits(guild_id) if guild_id is not None else None
        return EffectiveLimits.combine(server, self.settings)

    async def check(self, request: Request, limits: EffectiveLimits, *, guild_id: int | None, user_id: int) -> None:
        ledger = self.database.ledger
        active = await ledger.active_jobs(guild_id, user_id)
        # A button pressed twice, or the same seeded command sent again while the first waits or runs
        # (a result being delivered is already the member's to see: asking again is not a repeat press).
        # Compared as stored: an img2img job's input image by its SHA-256 (the image itself is on disk).
        command, params = command_of(request), request_to_params(request)
        repeats = (job for job in active if job.status != JobStatus.DELIVERING)
        if any((job.command, _asked(job.params)) == (command, params) for job in repeats):
            raise DuplicateRequest()
        check_request(
            request, limits, steps_used_today=await ledger.steps_used_today(guild_id, user_id), active_jobs=len(active)
        )

    async def sweet_spot(self, guild_id: int | None, model: str, scheduler: str) -> SweetSpot | None:
        return await self.database.sweet_spots.for_scheduler(guild_id, model, scheduler)


def _asked(params: dict[str, Any]) -> dict[str, Any]:
    """A job's params as its request gives them: without the line saying where its learned steps came from."""
    return {name: value for name, value in params.items() if name != STEPS_NOTE}
