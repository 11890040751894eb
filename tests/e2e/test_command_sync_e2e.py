"""Slash commands are synced only when their definitions changed, and `stepgrid sync` forces it.

The real discord.py client logs in to the fake Discord (login runs setup_hook, where the bot syncs);
the fake counts the bulk-overwrite PUTs. The GPU side plays no part: a scripted queue stands in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from bot.chat.client import EXTENSIONS, Stepgrid, sync_now
from bot.config import Settings
from bot.storage.database import Database
from tests.bot.fakes import ScriptedQueue
from tests.e2e.helpers import e2e_settings
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "stepgrid.sqlite3", e2e_settings()) as database:
        yield database


def syncs(fake: FakeDiscord) -> list[str]:
    """The bulk overwrites the bot sent, by path."""
    return [request.path for request in fake.requests if request.method == "PUT"]


async def start(
    fake: FakeDiscord,
    database: Database,
    *,
    settings: Settings | None = None,
    extensions: Sequence[str] = EXTENSIONS,
) -> None:
    """One start of the bot as far as its commands go: login runs setup_hook, which syncs."""
    bot = Stepgrid(settings or e2e_settings(), queue=ScriptedQueue(), database=database, extensions=extensions)
    async with bot:
        await bot.login(fake.token)


async def test_a_second_start_with_the_same_commands_does_not_sync(
    fake_discord: FakeDiscord, database: Database
) -> None:
    await start(fake_discord, database)
    assert syncs(fake_discord) == [f"/applications/{fake_discord.application_id}/commands"]
    assert {command["name"] for command in fake_discord.commands[None]} >= {"imagine", "compare-steps", "limits"}

    await start(fake_discord, database)
    assert len(syncs(fake_discord)) == 1


async def test_a_changed_definition_is_synced_at_the_next_start(fake_discord: FakeDiscord, database: Database) -> None:
    without_usage = [extension for extension in EXTENSIONS if extension != "bot.chat.cogs.usage"]
    await start(fake_discord, database, extensions=without_usage)  # an older version without /usage
    assert "usage" not in {command["name"] for command in fake_discord.commands[None]}

    await start(fake_discord, database)
    assert len(syncs(fake_discord)) == 2
    assert "usage" in {command["name"] for command in fake_discord.commands[None]}
    await start(fake_discord, database)
    assert len(syncs(fake_discord)) == 2


async def test_the_dev_guild_is_its_own_scope(fake_discord: FakeDiscord, database: Database) -> None:
    guild = fake_discord.guild.id
    await start(fake_discord, database)
    await start(fake_discord, database, settings=e2e_settings(dev_guild_id=guild))
    await start(fake_discord, database, settings=e2e_settings(dev_guild_id=guild))
    assert syncs(fake_discord) == [
        f"/applications/{fake_discord.application_id}/commands",
        f"/applications/{fake_discord.application_id}/guilds/{guild}/commands",
    ]


async def test_stepgrid_sync_syncs_even_when_nothing_changed(
    fake_discord: FakeDiscord, database: Database, tmp_path: Path
) -> None:
    await start(fake_discord, database)
    fake_discord.commands.clear()  # removed on Discord's side by something else: only a forced sync helps
    settings = e2e_settings(discord_token=fake_discord.token, database_path=database.path)

    await sync_now(settings)

    assert len(syncs(fake_discord)) == 2
    assert "imagine" in {command["name"] for command in fake_discord.commands[None]}
    await start(fake_discord, database)
    assert len(syncs(fake_discord)) == 2  # what sync sent is remembered
    assert not [r for r in fake_discord.requests if "gateway" in r.path]  # it never connected


@pytest.mark.parametrize(
    ("token", "message"), [("", "No Discord token"), ("wrong.token.x", "Discord rejected the token")]
)
async def test_stepgrid_sync_with_a_bad_token_is_one_line_and_exit_2(
    fake_discord: FakeDiscord, tmp_path: Path, token: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from bot.cli.main import main

    env = {"STEPGRID_DISCORD_TOKEN": token, "STEPGRID_DATABASE_PATH": str(tmp_path / "db.sqlite3")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(tmp_path)  # no .env from the checkout
        status = await asyncio.to_thread(main, ["sync"])

    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not syncs(fake_discord)
