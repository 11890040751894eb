"""A server's own memory end to end: `/compare-steps` grids on the tiny model in a real worker are remembered in
a real ledger, `/sweet-spots` shows them, and `/imagine` without steps runs where they settle once the server
turned `learned_steps` on and has the operator's N grids (never from fewer), saying so. Waits are on what the
fake Discord records, never on sleeps."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from bot.pictures.render import png_parameters
from bot.storage.database import Database
from bot.storage.models import SettlePoint
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import (
    content,
    e2e_settings,
    embed_fields,
    ephemeral_reply,
    refusal,
    running_bot,
    wait_for_result,
)
from tests.fake_discord import FakeDiscord, RecordedRequest, running_fake

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MIN_GRIDS = 2
GRID = {"prompt": "a red fox", "steps": "2,4,8,16", "size": "256", "scheduler": "Euler", "seed": 1}
IMAGINE = {"prompt": "a lighthouse", "size": "256", "scheduler": "Euler", "seed": 7}


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=120.0) as fake:  # a hang guard, not a timing expectation
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "stepgrid.sqlite3", e2e_settings(learned_steps_min_grids=MIN_GRIDS)) as database:
        yield database


def description(reply: RecordedRequest) -> str:
    embeds: list[dict[str, Any]] = reply.data.get("embeds") or []
    return str(embeds[0].get("description", "")) if embeds else ""


async def test_grids_are_remembered_shown_by_sweet_spots_and_used_by_imagine_once_there_are_n(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    settings = e2e_settings(learned_steps_min_grids=MIN_GRIDS)
    async with running_bot(fake, worker, settings=settings, database=database):
        empty = await ephemeral_reply(await fake.invoke("sweet-spots"))
        assert "No grids remembered in this server yet" in description(empty)
        await refusal(await fake.invoke("limits-set", {"learned_steps": True}, user=fake.admin))

        first = await wait_for_result(await fake.invoke("compare-steps", GRID))
        settled = re.search(r"Euler settles at (\d+) steps", content(first) or "")
        assert settled, f"the tiny model's grid at seed 1 settles: {content(first)}"
        learned = int(settled.group(1))

        # One grid of the two the operator asks for: the default, and why.
        early = await wait_for_result(await fake.invoke("imagine", IMAGINE))
        assert content(early) == (
            "8 steps, the default: learned steps need 2 grids of Euler on tiny; this server has 1 "
            "(`/compare-steps` adds one)."
        )
        assert embed_fields(early)["Steps"] == "8"

        await wait_for_result(await fake.invoke("compare-steps", GRID))
        table = description(await ephemeral_reply(await fake.invoke("sweet-spots")))
        row = next(line for line in table.splitlines() if line.startswith("tiny "))
        assert row.split() == ["tiny", "Euler", str(learned), "2", "0"]

        final = await wait_for_result(await fake.invoke("imagine", IMAGINE))

    assert content(final) == (
        f"{learned} steps: where this server's grids settle for Euler (tiny, the middle of 2 grids)."
    )
    assert embed_fields(final)["Steps"] == str(learned)
    assert f"Steps: {learned}," in (png_parameters(final.files[0].data) or "")
    async with database.sessions() as session:
        points = list(await session.scalars(sa.select(SettlePoint)))
    assert [(p.model, p.scheduler, p.width, p.height, p.ladder, p.settle_step) for p in points] == [
        ("tiny", "Euler", 256, 256, [2, 4, 8, 16], learned)
    ] * 2
