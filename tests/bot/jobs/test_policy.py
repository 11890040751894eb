"""Where a server's limits come from, and the check against the member's jobs and steps in the ledger."""

from __future__ import annotations

import pytest

from bot.config import Settings
from bot.errors import DuplicateRequest
from bot.jobs.policy import DatabasePolicy, SettingsPolicy
from bot.limits.server import LimitExceeded
from bot.storage.database import Database
from bot.storage.sweet_spots import SettledRow
from inference.protocol import GeneratedImage, JobResult
from inference.requests import CompareStepsRequest, GenerateRequest

GUILD, ALICE = 1000, 11
SETTINGS = Settings(_env_file=None, default_steps=40, max_concurrent_jobs_per_user=1)  # type: ignore[call-arg]


async def test_without_a_database_the_operators_limits_apply_everywhere() -> None:
    policy = SettingsPolicy(SETTINGS)
    limits = await policy.limits(GUILD)
    assert limits == await policy.limits(None)
    assert (limits.default_steps, limits.max_steps) == (40, SETTINGS.max_steps)
    # No ledger to count with: a member's jobs and steps never refuse a request.
    await policy.check(GenerateRequest("fox"), limits, guild_id=GUILD, user_id=ALICE)


async def test_a_servers_own_limits_apply_in_that_server_only(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, default_steps=12)
    policy = DatabasePolicy(db, SETTINGS)
    assert (await policy.limits(GUILD)).request_defaults().steps == 12
    assert (await policy.limits(GUILD + 1)).request_defaults().steps == 40
    assert (await policy.limits(None)).request_defaults().steps == 40


async def test_the_check_counts_the_members_jobs_in_the_ledger(db: Database) -> None:
    policy = DatabasePolicy(db, SETTINGS)
    limits = await policy.limits(GUILD)
    await policy.check(GenerateRequest("fox"), limits, guild_id=GUILD, user_id=ALICE)
    await db.ledger.record_job(GenerateRequest("fox"), user_id=ALICE, channel_id=5, guild_id=GUILD)
    with pytest.raises(LimitExceeded) as caught:
        await policy.check(GenerateRequest("wolf"), limits, guild_id=GUILD, user_id=ALICE)
    assert caught.value.limit == "max_concurrent_jobs_per_user"
    await policy.check(GenerateRequest("wolf"), limits, guild_id=GUILD + 1, user_id=ALICE)


async def test_a_request_equal_to_one_the_member_has_queued_is_refused_as_a_duplicate(db: Database) -> None:
    policy = DatabasePolicy(db, Settings(_env_file=None))  # type: ignore[call-arg]
    limits = await policy.limits(GUILD)
    await db.ledger.record_job(GenerateRequest("fox", seed=7), user_id=ALICE, channel_id=5, guild_id=GUILD)
    with pytest.raises(DuplicateRequest, match="already have this exact job queued or running"):
        await policy.check(GenerateRequest("fox", seed=7), limits, guild_id=GUILD, user_id=ALICE)
    await policy.check(GenerateRequest("fox", seed=8), limits, guild_id=GUILD, user_id=ALICE)  # a reroll
    await policy.check(GenerateRequest("fox", seed=7), limits, guild_id=GUILD, user_id=ALICE + 1)  # someone else


async def test_a_request_equal_to_one_whose_result_is_being_delivered_is_no_duplicate(db: Database) -> None:
    policy = DatabasePolicy(db, Settings(_env_file=None))  # type: ignore[call-arg]
    job = await db.ledger.record_job(GenerateRequest("fox", seed=7), user_id=ALICE, channel_id=5, guild_id=GUILD)
    await db.ledger.mark_running(job.id)
    image = GeneratedImage(b"png", seed=7, steps=30, width=512, height=512, seconds=1.0)
    assert await db.ledger.mark_delivering(job.id, JobResult(job.id, (image,), gpu_seconds=1.0))
    # The member may already see that result and ask for the same image again on purpose.
    await policy.check(GenerateRequest("fox", seed=7), await policy.limits(GUILD), guild_id=GUILD, user_id=ALICE)


async def test_an_img2img_request_is_a_duplicate_only_of_the_same_image(db: Database) -> None:
    policy = DatabasePolicy(db, Settings(_env_file=None))  # type: ignore[call-arg]
    limits = await policy.limits(GUILD)
    png = b"\x89PNG\r\n\x1a\n" + b"one"
    first = GenerateRequest("fox", seed=7, image=png, strength=0.5)
    await db.ledger.record_job(first, user_id=ALICE, channel_id=5, guild_id=GUILD)
    with pytest.raises(DuplicateRequest):
        await policy.check(first, limits, guild_id=GUILD, user_id=ALICE)
    other = GenerateRequest("fox", seed=7, image=b"\x89PNG\r\n\x1a\n" + b"two", strength=0.5)
    await policy.check(other, limits, guild_id=GUILD, user_id=ALICE)


async def test_a_repeat_of_a_seeded_imagine_with_learned_steps_is_still_a_duplicate(db: Database) -> None:
    policy = DatabasePolicy(db, Settings(_env_file=None))  # type: ignore[call-arg]
    limits = await policy.limits(GUILD)
    note = "20 steps: where this server's grids settle for Euler (tiny, the middle of 3 grids)."
    request = GenerateRequest("fox", seed=7, steps=20)
    await db.ledger.record_job(request, user_id=ALICE, channel_id=5, guild_id=GUILD, steps_note=note)
    with pytest.raises(DuplicateRequest):
        await policy.check(request, limits, guild_id=GUILD, user_id=ALICE)


async def test_the_sweet_spots_come_from_the_servers_memory_and_none_without_a_ledger(db: Database) -> None:
    request = CompareStepsRequest("fox", steps=(5, 10, 20))
    for _ in range(2):
        job = await db.ledger.record_job(request, user_id=ALICE, channel_id=5, guild_id=GUILD)
        rows = [SettledRow(0, "Euler", (5, 10, 20), 10)]
        await db.sweet_spots.record(job.id, guild_id=GUILD, model="tiny", width=512, height=512, rows=rows)

    spot = await DatabasePolicy(db, SETTINGS).sweet_spot(GUILD, "tiny", "Euler")
    assert spot is not None and (spot.grids, spot.median) == (2, 10)
    assert await DatabasePolicy(db, SETTINGS).sweet_spot(GUILD + 1, "tiny", "Euler") is None
    assert await SettingsPolicy(SETTINGS).sweet_spot(GUILD, "tiny", "Euler") is None
