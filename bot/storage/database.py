"""The bot's database (a SQLite file, or PostgreSQL) with its writer task, the job ledger, each server's limits,
command syncs."""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings
from bot.storage.command_syncs import CommandSyncs
from bot.storage.inputs import InputImages
from bot.storage.ledger import Ledger
from bot.storage.limit_store import LimitStorage
from bot.storage.models import utcnow
from bot.storage.writer import DatabaseWriter, WallClock


class Database(DatabaseWriter):
    """The database: `ledger` holds the jobs, `server_limits` each server's own limits, `command_syncs` what
    slash commands were last synced."""

    def __init__(
        self,
        path: Path | str,
        settings: Settings | None = None,
        *,
        clock: WallClock = utcnow,
        url: str | None = None,
    ) -> None:
        super().__init__(path, settings, clock=clock, url=url)
        # Input images of unfinished jobs, beside the database file (the data folder; on PostgreSQL too).
        self.inputs = InputImages(self.path.parent / "inputs")
        self.ledger = Ledger(self, self.inputs, owner=settings.bot_id if settings is not None else "stepgrid")
        self.server_limits = LimitStorage(self)
        self.command_syncs = CommandSyncs(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The operator's database: STEPGRID_DATABASE_URL's server if set, else the SQLite file."""
        return cls(settings.database_path, settings, url=settings.database_url)
