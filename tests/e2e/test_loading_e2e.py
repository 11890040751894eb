"""Commands sent to `stepgrid run` while its worker is still loading get their model's defaults.

The bot runs as a real subprocess against the fake Discord in this process; its worker waits for a
file (STEPGRID_TEST_LOAD_GATE) before it loads the models, so the commands are surely sent before
any model is known. Waits are on what the fake records and on the bot's log lines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inference.worker import LOAD_GATE
from tests.e2e.bot_process import WORKER_READY, BotProcess, bot_env
from tests.e2e.helpers import content, image_of, result_files, wait_for_progress
from tests.fake_discord import FakeDiscord, InteractionHandle, RecordedRequest
from tests.inference.config_folders import FLUX_SCHNELL, config_only_folder

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# A FLUX.1-schnell-like model as the default (it can't run the generic default scheduler, Euler a) and an
# SD one whose native size (256) is not the generic default size (512).
REGISTRY = """
[[models]]
name = "flux"
source = "tiny-flux"

[[models]]
name = "sd"
source = "tiny"
"""


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(timeout=180.0)  # a hang guard for a CPU-bound worker, not a timing expectation
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    fake.assert_no_unknown_routes()


def answer_of(handle: InteractionHandle) -> RecordedRequest | None:
    """The request that answered the job: its image, or the failure note."""
    for request in handle.requests:
        if request.ok and (result_files(request) or "could not be made" in (content(request) or "")):
            return request
    return None


def job_settings(database: Path) -> list[tuple[str, str | None, str, str]]:
    """(id, model, scheduler, status) of every job in the ledger, oldest first."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT id, model, scheduler, status FROM jobs ORDER BY created_at, id").fetchall()


async def test_commands_sent_while_the_worker_loads_run_with_their_models_defaults(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    database, gate = tmp_path / "stepgrid.sqlite3", tmp_path / "load-gate"
    env = {**bot_env(fake, database, model_cache_dir), "STEPGRID_MODEL": REGISTRY, LOAD_GATE: str(gate)}
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        on_flux = await fake.invoke("imagine", {"prompt": "a lighthouse", "seed": 5})  # the default model
        on_sd = await fake.invoke("imagine", {"prompt": "a harbour", "model": "sd"}, user=fake.admin)
        for handle in (on_flux, on_sd):
            assert "The model is still loading" in (content(await wait_for_progress(handle, "Queued")) or "")
        assert not any(WORKER_READY in line for line in bot.lines)  # both sent before any model was known

        gate.touch()
        for handle in (on_flux, on_sd):
            answer = await handle.wait_for(lambda r, handle=handle: answer_of(handle) is r)
            assert result_files(answer), f"refused: {content(answer)}"
            assert image_of(result_files(answer)[0].data).size == (256, 256)  # the models' native size
        jobs = await asyncio.to_thread(job_settings, database)
        for job_id, *_ in jobs:  # logged once the ledger has the result
            await bot.wait_for_log(f"job {job_id} done", within=fake.timeout)
        # Sorted by model: the two commands' rows are written after their acknowledgements, in either order.
        assert sorted(settings for _, *settings in await asyncio.to_thread(job_settings, database)) == [
            ["flux", "Euler", "done"],  # FLUX's own scheduler, not the generic Euler a
            ["sd", "Euler a", "done"],
        ]
    finally:
        await bot.kill(signal.SIGKILL)


async def test_an_option_the_model_cant_take_is_refused_at_once_while_it_loads(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    """The model folder's configs say it is FLUX.1-schnell: guidance or a negative prompt is refused as the
    command is sent, not held until the model has loaded (minutes for a real one) and refused then. Its weights
    can't even be read, and the worker never starts loading them here."""
    database, gate = tmp_path / "stepgrid.sqlite3", tmp_path / "load-gate"  # the gate is never opened
    folder = config_only_folder(tmp_path / "schnell", FLUX_SCHNELL)
    registry = f'[[models]]\nname = "schnell"\nsource = "{folder}"\n'
    env = {**bot_env(fake, database, model_cache_dir), "STEPGRID_MODEL": registry, LOAD_GATE: str(gate)}
    bot = BotProcess(env, tmp_path / "bot.log")
    await bot.start()
    try:
        refusals = {
            "ignores guidance; leave it out (got 3).": {"prompt": "a lighthouse", "guidance": 3.0},
            "doesn't use a negative prompt; leave it out.": {"prompt": "a lighthouse", "negative_prompt": "fog"},
        }
        for expected, options in refusals.items():
            handle = await fake.invoke("imagine", options)
            answer = await handle.wait_for_callback()
            assert answer.json["type"] == 4 and answer.ephemeral, content(answer)
            assert expected in (content(answer) or "")
        held = await fake.invoke("imagine", {"prompt": "a lighthouse", "seed": 5})  # fine for it: held, as before
        assert "The model is still loading" in (content(await wait_for_progress(held, "Queued")) or "")
        assert not any(WORKER_READY in line for line in bot.lines)
        assert [status for *_, status in await asyncio.to_thread(job_settings, database)] == ["queued"]
    finally:
        await bot.kill(signal.SIGKILL)
