"""The hash of the slash commands last synced to each scope (the bot syncs again only when it changed), on both
ledger backends."""

from __future__ import annotations

from bot.storage.database import Database


async def test_a_scope_never_synced_has_no_hash_and_the_last_remembered_one_wins(db: Database) -> None:
    syncs = db.command_syncs
    assert await syncs.last_synced("global") is None
    await syncs.remember("global", "a" * 64)
    await syncs.remember("guild:1", "b" * 64)
    await syncs.remember("global", "c" * 64)
    assert await syncs.last_synced("global") == "c" * 64
    assert await syncs.last_synced("guild:1") == "b" * 64
