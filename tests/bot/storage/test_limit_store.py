"""Each server's limits in the database, and their audit trail."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.config import Settings
from bot.limits.server import InvalidLimit, ServerLimits
from bot.storage.database import Database
from bot.storage.limit_store import SNAPSHOT_SECONDS, LimitStorage
from tests.bot.backends import Backend
from tests.bot.fakes import ALICE, BOB, GUILD, OTHER_GUILD, REGISTRY
from tests.bot.fakes import FakeWallClock as FakeClock

# --- limits ----------------------------------------------------------------------------------------


async def test_a_server_without_limits_uses_the_operators(db: Database) -> None:
    assert await db.server_limits.get_limits(GUILD) == ServerLimits()


async def test_set_limits_stores_and_audits_each_change(db: Database, clock: FakeClock) -> None:
    limits = await db.server_limits.set_limits(GUILD, ALICE, max_steps=40, allowed_schedulers="euler, dpm++ 2m")
    clock.advance(minutes=5)
    await db.server_limits.set_limits(GUILD, BOB, max_steps=20, default_steps=15)

    assert limits.allowed_schedulers == ("Euler", "DPM++ 2M")
    assert await db.server_limits.get_limits(GUILD) == ServerLimits(
        max_steps=20, default_steps=15, allowed_schedulers=("Euler", "DPM++ 2M")
    )
    history = await db.server_limits.limits_history(GUILD)
    changes = {(c.user_id, c.field, repr(c.old_value), repr(c.new_value), c.changed_at) for c in history}
    first, second = datetime(2026, 3, 14, 12, 0, tzinfo=UTC), datetime(2026, 3, 14, 12, 5, tzinfo=UTC)
    assert changes == {
        (ALICE, "max_steps", "None", "40", first),
        (ALICE, "allowed_schedulers", "None", "['Euler', 'DPM++ 2M']", first),
        (BOB, "max_steps", "40", "20", second),
        (BOB, "default_steps", "None", "15", second),
    }


async def test_setting_a_value_it_already_has_is_not_a_change(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=40)
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=40)

    assert len(await db.server_limits.limits_history(GUILD)) == 1


async def test_a_rejected_change_changes_nothing(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=40)

    with pytest.raises(InvalidLimit, match=r"^default_steps must be 1 to 40 \(this server's max steps\); got 50\.$"):
        await db.server_limits.set_limits(GUILD, BOB, default_steps=50, max_grid_cells=4)

    assert await db.server_limits.get_limits(GUILD) == ServerLimits(max_steps=40)
    assert len(await db.server_limits.limits_history(GUILD)) == 1


async def test_a_server_cannot_raise_a_limit_above_the_operators_ceiling(db: Database) -> None:
    with pytest.raises(InvalidLimit, match=r"max_steps must be 1 to 150 \(the operator's ceiling\); got 500\."):
        await db.server_limits.set_limits(GUILD, ALICE, max_steps=500)
    with pytest.raises(InvalidLimit, match="daily_steps_per_user"):
        await db.server_limits.set_limits(GUILD, ALICE, daily_steps_per_user=10**9)

    assert await db.server_limits.get_limits(GUILD) == ServerLimits()


async def test_reset_limits_goes_back_to_the_operators_values_and_is_audited(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=40, banned_words=["Gore", "war crimes"])
    assert (await db.server_limits.get_limits(GUILD)).banned_words == ("gore", "war crimes")

    await db.server_limits.reset_limits(GUILD, BOB, ["banned_words"])
    assert await db.server_limits.get_limits(GUILD) == ServerLimits(max_steps=40)
    await db.server_limits.reset_limits(GUILD, BOB)
    assert await db.server_limits.get_limits(GUILD) == ServerLimits()

    history = await db.server_limits.limits_history(GUILD)
    resets = [(c.user_id, c.field, c.new_value) for c in history if c.user_id == BOB]
    assert sorted(resets) == [(BOB, "banned_words", None), (BOB, "max_steps", None)]


async def test_limits_of_one_server_do_not_touch_another(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=10)

    assert await db.server_limits.get_limits(OTHER_GUILD) == ServerLimits()


# --- model limits ----------------------------------------------------------------------------------


async def test_model_limits_are_stored_and_audited(backend: Backend, clock: FakeClock) -> None:
    settings = Settings(_env_file=None, model=REGISTRY)  # type: ignore[call-arg]
    async with backend.database(settings, clock=clock) as database:
        await database.server_limits.set_limits(
            GUILD, ALICE, allowed_models="flux, sd15", default_model="flux", model_max_steps="flux=28, sd15=40"
        )
        stored = await database.server_limits.get_limits(GUILD)
        history = await database.server_limits.limits_history(GUILD)
    assert stored == ServerLimits(
        allowed_models=("sd15", "flux"), default_model="flux", model_max_steps=(("sd15", 40), ("flux", 28))
    )
    assert {(change.field, repr(change.new_value)) for change in history} == {
        ("allowed_models", "['sd15', 'flux']"),
        ("default_model", "'flux'"),
        ("model_max_steps", "{'sd15': 40, 'flux': 28}"),
    }


async def test_a_model_outside_the_registry_changes_nothing(db: Database) -> None:
    with pytest.raises(InvalidLimit, match="unknown model 'sdxl'"):
        await db.server_limits.set_limits(GUILD, ALICE, max_steps=20, allowed_models="sdxl")
    assert await db.server_limits.get_limits(GUILD) == ServerLimits()


async def test_learned_steps_is_stored_and_audited_and_reset_to_the_operators(db: Database) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, learned_steps=True)
    await db.server_limits.reset_limits(GUILD, BOB, ["learned_steps"])

    history = await db.server_limits.limits_history(GUILD)
    assert [(c.user_id, c.field, c.old_value, c.new_value) for c in history] == [
        (BOB, "learned_steps", True, None),
        (ALICE, "learned_steps", None, True),
    ]
    assert await db.server_limits.get_limits(GUILD) == ServerLimits()


async def test_the_limits_snapshot_has_this_processs_changes_at_once_and_anothers_once_it_is_read_again(
    db: Database, backend: Backend
) -> None:
    now = [0.0]
    snapshot = LimitStorage(db, clock=lambda: now[0])
    assert await snapshot.current_limits(GUILD) == ServerLimits()
    await snapshot.set_limits(GUILD, ALICE, max_steps=20)
    assert (await snapshot.current_limits(GUILD)).max_steps == 20  # its own change, at once
    other = backend.database()  # another bot process on the same ledger
    await other.start()
    try:
        await other.server_limits.set_limits(OTHER_GUILD, BOB, max_steps=12)
    finally:
        await other.close()
    assert (await snapshot.current_limits(OTHER_GUILD)).max_steps is None  # not read again yet
    now[0] += SNAPSHOT_SECONDS
    assert (await snapshot.current_limits(OTHER_GUILD)).max_steps == 12
    assert (await snapshot.current_limits(GUILD)).max_steps == 20
