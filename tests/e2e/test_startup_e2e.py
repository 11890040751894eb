"""`stepgrid run` that has nothing to serve stops at start with one line, instead of staying up looking healthy."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.bot_process import BotProcess, bot_env
from tests.fake_discord import FakeDiscord, running_fake

pytestmark = [pytest.mark.slow]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=120.0) as fake:  # a hang guard for the worker's start, not a timing expectation
        yield fake


async def test_a_registry_whose_only_model_is_of_an_unknown_family_stops_the_bot_with_one_line_and_exit_2(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    env = bot_env(fake, tmp_path / "stepgrid.sqlite3", model_cache_dir)
    env["STEPGRID_MODEL"] = f'models = [{{name = "kandinsky", source = "{folder}"}}]'
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        async with asyncio.timeout(fake.timeout):  # a hang guard: the bot used to stay up
            status = await bot.exited()
        log = "".join(bot.lines)
        assert status == 2, log
        assert "Traceback" not in log
        [line] = [line for line in bot.lines if line.startswith("stepgrid:")]
        assert line.startswith("stepgrid: no model to serve: ") and "KandinskyV22Pipeline" in line, line
    finally:
        await bot.kill(signal.SIGKILL)
