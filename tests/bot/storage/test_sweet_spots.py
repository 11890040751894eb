"""A server's memory of where its grids settle: rows recorded once, the middle settle step and counts per model ×
scheduler, each server on its own (on SQLite and PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.storage.database import Database
from bot.storage.sweet_spots import SettledRow, SweetSpot, sweet_spot
from inference.requests import CompareSchedulersRequest
from tests.bot.fakes import ALICE, CHANNEL, GUILD, OTHER_GUILD

LADDER = (5, 10, 20, 30, 40)


async def grid_job(db: Database, guild: int = GUILD) -> str:
    request = CompareSchedulersRequest(prompt="a fox", schedulers=("Euler", "DDIM"), steps=LADDER)
    job = await db.ledger.record_job(request, user_id=ALICE, channel_id=CHANNEL, guild_id=guild)
    return job.id


async def remember(db: Database, settles: Sequence[int | None], *, guild: int = GUILD, model: str = "tiny",
                   scheduler: str = "Euler") -> None:  # fmt: skip
    """One grid per settle step in `settles`, each of one row of `scheduler`."""
    for step in settles:
        job_id = await grid_job(db, guild)
        rows = [SettledRow(0, scheduler, LADDER, step)]
        await db.sweet_spots.record(job_id, guild_id=guild, model=model, width=256, height=256, rows=rows)


async def test_each_grid_row_is_remembered_once_with_its_settle_step_or_not_settled(db: Database) -> None:
    job_id = await grid_job(db)
    rows = [SettledRow(0, "Euler", LADDER, 20), SettledRow(1, "DDIM", LADDER, None)]

    added = await db.sweet_spots.record(job_id, guild_id=GUILD, model="tiny", width=256, height=320, rows=rows)
    again = await db.sweet_spots.record(job_id, guild_id=GUILD, model="tiny", width=256, height=320, rows=rows)

    assert (added, again) == (2, 0)  # a result delivered twice (start-up recovery) is remembered once
    assert await db.sweet_spots.for_server(GUILD) == [
        SweetSpot("tiny", "DDIM", grids=1, settled=0, median=None, lowest=None, highest=None),
        SweetSpot("tiny", "Euler", grids=1, settled=1, median=20, lowest=20, highest=20),
    ]


async def test_the_middle_settle_step_and_counts_per_model_and_scheduler(db: Database) -> None:
    await remember(db, [30, 10, 20, None, 20])
    await remember(db, [8], model="tiny-sdxl")
    await remember(db, [40, 40, 40], scheduler="DDIM")

    spots = await db.sweet_spots.for_server(GUILD)

    assert spots == [
        SweetSpot("tiny", "Euler", grids=5, settled=4, median=20, lowest=10, highest=30),
        SweetSpot("tiny", "DDIM", grids=3, settled=3, median=40, lowest=40, highest=40),
        SweetSpot("tiny-sdxl", "Euler", grids=1, settled=1, median=8, lowest=8, highest=8),
    ]
    assert spots[0].not_settled == 1
    assert await db.sweet_spots.for_scheduler(GUILD, "tiny", "DDIM") == spots[1]


async def test_each_server_has_its_own_memory(db: Database) -> None:
    await remember(db, [20, 20, 20])

    assert await db.sweet_spots.for_server(OTHER_GUILD) == []
    assert await db.sweet_spots.for_scheduler(OTHER_GUILD, "tiny", "Euler") is None
    assert await db.sweet_spots.for_scheduler(GUILD, "tiny", "DDIM") is None
    assert (await db.sweet_spots.for_server(GUILD))[0].grids == 3


def test_rows_that_did_not_settle_rank_above_every_step_so_mostly_unsettled_means_no_sweet_spot() -> None:
    assert sweet_spot("m", "Euler a", {20: 1, None: 2}).median is None
    assert sweet_spot("m", "Euler a", {20: 2, None: 1}).median == 20


def test_of_an_even_count_the_middle_is_the_higher_of_the_two() -> None:
    assert sweet_spot("m", "Euler", {10: 1, 30: 1}).median == 30
    assert sweet_spot("m", "Euler", {20: 1, None: 1}).median is None
