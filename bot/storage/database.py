"""The bot's database (a SQLite file, or PostgreSQL) with its writer task, the job ledger, each server's limits,
command syncs."""

from __future__ import annotations

from functools import cached_property

from bot.config import Settings
from bot.storage.cells import CellImages
from bot.storage.command_syncs import CommandSyncs
from bot.storage.inputs import InputImages
from bot.storage.ledger import Ledger
from bot.storage.limit_store import LimitStorage
from bot.storage.sweet_spots import SweetSpots
from bot.storage.writer import DatabaseWriter


class Database(DatabaseWriter):
    """The database: `ledger` holds the jobs, `server_limits` each server's own limits, `command_syncs` what
    slash commands were last synced, `sweet_spots` where each server's grids settled."""

    # Built on first use, after the writer set the path and engine they work through.
    @cached_property
    def inputs(self) -> InputImages:
        """Input images of unfinished jobs, beside the database file (the data folder; on PostgreSQL too)."""
        return InputImages(self.path.parent / "inputs")

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self, self.inputs, owner=self.settings.bot_id)

    @cached_property
    def cells(self) -> CellImages:
        """A grid's cells, unframed, for their Vary and Upscale (the oldest cleared past a cap)."""
        return CellImages(self.path.parent / "cells")

    @cached_property
    def server_limits(self) -> LimitStorage:
        return LimitStorage(self)

    @cached_property
    def command_syncs(self) -> CommandSyncs:
        return CommandSyncs(self)

    @cached_property
    def sweet_spots(self) -> SweetSpots:
        """Where each server's grids settled (`/sweet-spots`, learned steps)."""
        return SweetSpots(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The operator's database: STEPGRID_DATABASE_URL's server if set, else the SQLite file."""
        return cls(settings.database_path, settings, url=settings.database_url)
