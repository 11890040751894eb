"""The bot's database: one SQLite file with its writer task, the job ledger, each server's limits, command syncs."""

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

    def __init__(self, path: Path | str, settings: Settings | None = None, *, clock: WallClock = utcnow) -> None:
        super().__init__(path, settings, clock=clock)
        # Input images of unfinished jobs, beside the database file (the data folder).
        self.inputs = InputImages(self.path.parent / "inputs")
        self.ledger = Ledger(self, self.inputs)
        self.server_limits = LimitStorage(self)
        self.command_syncs = CommandSyncs(self)
