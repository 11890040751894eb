"""Server limits, the usage ledger and start-up recovery, end to end through the fake Discord.

One spawned worker (the tiny model) serves the module; each test runs its own bot, fake Discord and
database. Waits are on what the fake records, never on sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from bot.pictures.render import CHART_SIZE
from bot.storage.database import Database
from bot.storage.models import JobRow
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import (
    button,
    content,
    embed_fields,
    ephemeral_reply,
    image_of,
    refusal,
    refusal_after_defer,
    result_files,
    running_bot,
    wait_for_progress,
    wait_for_result,
    worker_paused,
)
from tests.fake_discord import (
    CommandUnavailable,
    FakeDiscord,
    FakeMember,
    InteractionHandle,
)
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ADMIN_COMMANDS = ("limits-set", "limits-reset", "usage-server")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    """One real worker running the tiny model for the whole module."""
    async with started_queue(
        LocalJobQueue(dataclasses.replace(tiny_config, max_batch_lanes=1), max_length=50, hang_seconds=120)
    ) as queue:
        yield queue


# --- helpers -----------------------------------------------------------------------------------------


def grant_to_everyone(fake: FakeDiscord, name: str) -> None:
    """What a server's Integrations settings can do: give a hidden command to every member anyway."""
    for commands in fake.commands.values():
        for command in commands:
            if command["name"] == name:
                command["default_member_permissions"] = None


async def all_jobs(database: Database) -> list[JobRow]:
    async with database.sessions() as session:
        return list(await session.scalars(sa.select(JobRow).order_by(JobRow.created_at)))


async def set_limits(fake: FakeDiscord, **options: Any) -> str:
    """Run /limits-set as the admin; returns the (ephemeral) confirmation."""
    return await refusal(await fake.invoke("limits-set", options, user=fake.admin))


def imagine(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"prompt": "a lighthouse at dusk", "steps": 4, "size": "256", "scheduler": "Euler"}
    options.update(overrides)
    return options


# --- who may change limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADMIN_COMMANDS)
async def test_a_member_without_manage_server_is_not_offered_the_admin_commands(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database, name: str
) -> None:
    async with running_bot(fake, worker, database=database):
        with pytest.raises(CommandUnavailable):
            await fake.invoke(name, user=fake.member)
        limits = await fake.invoke("limits", subcommand="show", user=fake.member)
        assert (await ephemeral_reply(limits)).data["embeds"]


async def test_a_forged_limits_change_from_a_member_is_refused_at_run_time(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        grant_to_everyone(fake, "limits-set")
        grant_to_everyone(fake, "limits-reset")
        text = await refusal(await fake.invoke("limits-set", {"max_steps": 5}, user=fake.member))
        assert text == "You need the manage guild permission to do that."
        text = await refusal(await fake.invoke("limits-reset", user=fake.member))
        assert text == "You need the manage guild permission to do that."
    assert (await database.server_limits.get_limits(fake.guild.id)).max_steps is None
    assert await database.server_limits.limits_history(fake.guild.id) == []


async def test_a_forged_server_usage_request_from_a_member_is_refused(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        grant_to_everyone(fake, "usage-server")
        text = await refusal(await fake.invoke("usage-server", user=fake.member))
        assert text == "You need the manage guild permission to do that."


# --- requests over a limit ---------------------------------------------------------------------------


async def test_after_max_steps_20_imagine_with_30_steps_is_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        confirmation = await set_limits(fake, max_steps=20)
        assert "max steps" in confirmation and "20" in confirmation
        text = await refusal(await fake.invoke("imagine", imagine(steps=30), user=fake.member))
        assert text == "This server allows at most 20 steps; you asked for 30."
        assert queue.submitted == []
    assert await all_jobs(database) == []


async def test_compare_steps_over_the_cell_limit_is_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, max_grid_cells=3)
        handle = await fake.invoke("compare-steps", {"prompt": "a fox", "steps": "2,4,6,8", "size": "256"})
        assert await refusal(handle) == "This server allows grids of at most 3 cells; you asked for 4."
        assert queue.submitted == []
    assert await all_jobs(database) == []


async def test_compare_schedulers_over_the_cell_limit_is_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, max_grid_cells=6)
        options = {"prompt": "a fox", "schedulers": "Euler a, DDIM, UniPC", "steps": "2,4,6", "size": "256"}
        assert await refusal(await fake.invoke("compare-schedulers", options)) == (
            "This server allows grids of at most 6 cells; you asked for 9 (3 schedulers × 3 step counts): "
            "give fewer of either."
        )
        options = {"prompt": "a fox", "schedulers": "Euler a, DDIM, UniPC, Heun", "steps": "2,4,6,8", "size": "256"}
        assert await refusal(await fake.invoke("compare-schedulers", options)) == (
            "A comparison grid has at most 12 cells; 4 schedulers × 4 step counts would be 16: give fewer of either."
        )
        assert queue.submitted == []
    assert await all_jobs(database) == []


async def test_compare_steps_over_the_compute_budget_is_refused_and_nothing_is_queued(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, compute_budget=256 * 256 * 100)
        handle = await fake.invoke("compare-steps", {"prompt": "a fox", "size": "256"})  # 5+10+20+30+40+50 steps
        assert await refusal(handle) == (
            "This request needs 10.2M pixel-steps (256×256 × 155 steps over 6 cells); "
            "this server allows 6.6M per request."
        )
        assert queue.submitted == []
    assert await all_jobs(database) == []


async def test_a_steps_film_whose_decodes_go_over_the_compute_budget_is_refused_with_what_to_change(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, compute_budget=256 * 256 * 7)
        first = await fake.invoke("imagine", imagine(steps=4))  # 4 steps fit; with the film's 4 decodes, 8 don't
        await wait_for_result(first)
        message = first.original_message

        click = await fake.click(message, button(message, "film"))
        assert await refusal(click) == (
            "This request needs 524.3k pixel-steps (256×256 × 8: 4 steps and a film frame decoded at each, "
            "counted as a step); this server allows 458.8k per request. Ask for fewer steps, a smaller size or no film."
        )
        fits = await fake.invoke("imagine", imagine(steps=3, film=True))  # 6 of 7
        await wait_for_result(fits)
        assert [submitted.request.film for submitted in queue.submitted] == [False, True]


async def test_a_daily_quota_runs_out_and_the_refusal_says_when_it_resets(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, daily_steps=6)
        first = await fake.invoke("imagine", imagine(steps=4))
        await wait_for_result(first)
        text = await refusal_after_defer(await fake.invoke("imagine", imagine(steps=4)))
        assert text.startswith("You have used 4 of your 6 daily steps; this request needs 4. Your quota resets in ")
        assert text.endswith("(00:00 UTC).")
        assert len(queue.submitted) == 1
        usage = await ephemeral_reply(await fake.invoke("usage"))
        quota = embed_fields(usage)["Today's quota"]
        assert quota.startswith("4 of 6 steps used; **2 left**.")
        assert "00:00 UTC" in quota


async def test_result_buttons_stop_at_the_servers_ceiling_and_a_double_press_queues_one_job(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        await set_limits(fake, max_steps=4)
        first = await fake.invoke("imagine", imagine(steps=4, seed=11))
        await wait_for_result(first)
        result = first.original_message
        more = next(
            b for row in result["components"] for b in row["components"] if b["custom_id"] == button(result, "more")
        )
        assert (more["disabled"], more["label"]) == (True, "4 steps")  # not "5 steps", refused when pressed
        with worker_paused(worker):  # the first press's job can't finish before the second press arrives
            pressed = await fake.click(result, button(result, "fewer"))
            assert (await pressed.wait_for_callback()).json["type"] == 5  # deferred: accepted
            again = await fake.click(result, button(result, "fewer"))
            assert await refusal_after_defer(again) == (
                "You already have this exact job queued or running; its result will appear in its message."
            )
        await wait_for_result(pressed)
        assert [s.request.steps for s in queue.submitted] == [4, 3]  # type: ignore[union-attr]


# --- changing and showing limits ---------------------------------------------------------------------


async def test_invalid_limit_values_are_refused_naming_the_field_and_range(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        assert await set_limits(fake, max_steps=500) == "max_steps must be 1 to 150 (the operator's ceiling); got 500."
        assert (await set_limits(fake, max_steps=20)).startswith("Limits updated.")
        assert await set_limits(fake, default_steps=30) == (
            "default_steps must be 1 to 20 (this server's max steps); got 30."
        )
        assert (await set_limits(fake, allowed_schedulers="Euler, Warp Drive")).startswith(
            "allowed_schedulers: unknown scheduler 'Warp Drive'; known: Euler, Euler a,"
        )
        assert await set_limits(fake) == "Give at least one setting to change; `/limits-reset` puts them back."
    assert [change.field for change in await database.server_limits.limits_history(fake.guild.id)] == ["max_steps"]


async def test_limits_show_marks_the_servers_values_and_history_says_who_changed_them(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        await set_limits(fake, max_steps=20, allowed_schedulers="Euler, DDIM", default_scheduler="DDIM")
        shown = embed_fields(await ephemeral_reply(await fake.invoke("limits", subcommand="show")))
        assert shown["max steps"] == "20\n*server*"
        assert shown["allowed schedulers"] == "Euler, DDIM\n*server*"
        assert shown["default scheduler"] == "DDIM\n*server*"
        assert shown["max grid cells"] == "12\n*operator*"
        history = await ephemeral_reply(await fake.invoke("limits", subcommand="history"))
        description = history.data["embeds"][0]["description"]
        assert f"<@{fake.admin.id}>: **max steps** operator's value → 20" in description
        assert "**default scheduler** operator's value → DDIM" in description

        reset = await refusal(await fake.invoke("limits-reset", {"setting": "max_steps"}, user=fake.admin))
        assert reset.startswith("Limits reset to the operator's values.\n**max steps**: 150 (operator)")
        shown = embed_fields(await ephemeral_reply(await fake.invoke("limits", subcommand="show")))
        assert shown["max steps"] == "150\n*operator*"
    assert [change.field for change in await database.server_limits.limits_history(fake.guild.id)] == [
        "max_steps", "default_scheduler", "allowed_schedulers", "max_steps",
    ]  # fmt: skip


# --- the ledger and /usage ---------------------------------------------------------------------------


async def test_every_job_done_cancelled_or_failed_has_exactly_one_ledger_row_with_its_figures(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database) as (_, queue):
        done = await fake.invoke("imagine", imagine(steps=4, seed=7))
        await wait_for_result(done)
        # With one lane, a long job keeps the next one waiting: cancel that one while queued, then the long one.
        running = await fake.invoke("imagine", imagine(steps=60, size="512"), user=fake.admin)
        await wait_for_progress(running, "step ")
        queued = await fake.invoke("imagine", imagine(steps=4))
        await wait_for_progress(queued, "Queued")
        for handle, user in ((queued, fake.member), (running, fake.admin)):
            message = handle.original_message
            click = await fake.click(message, button(message, "cancel"), user=user)
            assert content(await ephemeral_reply(click)) == "Cancelled."
        await fake.wait_for_request(lambda r: r.method == "DELETE" and r.token == running.token)
        crashed, crashed_id = await finished_job(fake, fake.member, seed=8)
    assert len(queue.submitted) == 4
    # The last one is left as a bot killed twice mid-run would leave it: the next start answers it as failed.
    await leave_unfinished(database, crashed_id, handle=crashed, attempts=2)
    async with running_bot(fake, worker, database=database):
        await crashed.wait_for(lambda r: r.is_followup and r.ephemeral)

    rows = await all_jobs(database)
    assert sorted(job.id for job in rows) == sorted(s.job_id for s in queue.submitted if s.job_id)
    assert [job.status for job in rows] == ["done", "cancelled", "cancelled", "failed"]
    finished, cancelled_running, cancelled_queued, failed = rows
    assert (finished.steps_requested, finished.steps_run, finished.images, finished.attempts) == (4, 4, 1, 1)
    assert finished.gpu_seconds is not None and finished.gpu_seconds > 0
    assert finished.queue_seconds is not None and finished.queue_seconds >= 0
    assert finished.params["seed"] == 7 and finished.scheduler == "Euler" and finished.user_id == fake.member.id
    assert (cancelled_running.user_id, cancelled_running.steps_requested, cancelled_running.attempts) == (
        fake.admin.id, 60, 1,
    )  # fmt: skip
    assert (cancelled_queued.steps_requested, cancelled_queued.attempts) == (4, 0)
    assert failed.error and "stopped 2 times" in failed.error
    for job in rows:
        assert job.finished_at is not None and job.guild_id == fake.guild.id and job.channel_id == fake.channel.id
        # Finished: the interaction token is gone (privacy); the message stays known.
        assert job.interaction_token is None and job.application_id == fake.application_id and job.message_id


async def test_usage_shows_a_members_figures_and_usage_server_the_servers(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        handle = await fake.invoke("imagine", imagine(steps=4, count=2))
        await wait_for_result(handle)
        usage = embed_fields(await ephemeral_reply(await fake.invoke("usage")))
        assert usage["Images"] == "2"
        assert usage["Jobs"] == "1"
        assert usage["Steps run"] == "8"
        assert usage["GPU time"].endswith(" s")
        assert usage["Today's quota"].startswith("8 of 5,000 steps used; **4,992 left**.")
        reply = await ephemeral_reply(await fake.invoke("usage-server", user=fake.admin))
        server = embed_fields(reply)
        assert server["Jobs"] == "1 (0 failed, 0 cancelled)"
        [chart] = reply.files  # the last 30 days, shown in the embed
        assert chart.filename == "usage-chart.png" and image_of(chart.data).size == CHART_SIZE
        assert reply.data["embeds"][0]["image"]["url"] == "attachment://usage-chart.png"
        assert server["Top members"].startswith(f"1. <@{fake.member.id}>: 8 steps, 2 images,")
        assert server["Top schedulers"] == "1. Euler: 1 jobs, 8 steps"


# --- start-up recovery (in process; the kill -9 test is in test_kill_e2e.py) -------------------------


async def leave_unfinished(database: Database, job_id: str, *, handle: InteractionHandle, **values: Any) -> None:
    """Put a job back as a crash before its result was posted would have left it, interaction token
    included (plus `values`); its message no longer shows the result (else the next start would only
    record it as delivered)."""
    message = handle.original_message
    assert message is not None
    handle.fake.messages[int(message["id"])]["components"] = []
    token = handle.token

    async def change(session: Any) -> None:
        job = await session.get(JobRow, job_id)
        job.status, job.finished_at, job.steps_run, job.gpu_seconds = "running", None, None, None
        job.interaction_token = token
        for name, value in values.items():
            setattr(job, name, value)

    await database.write(change)


async def finished_job(fake: FakeDiscord, user: FakeMember, **options: Any) -> tuple[InteractionHandle, str]:
    handle = await fake.invoke("imagine", imagine(**options), user=user)
    await wait_for_result(handle)
    return handle, handle.original_message["embeds"][0]["footer"]["text"].split()[1]


async def test_at_start_up_a_job_left_running_is_run_again_and_answered_in_its_message(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        handle, job_id = await finished_job(fake, fake.member, seed=11)
    await leave_unfinished(database, job_id, handle=handle, attempts=1)
    message_path = f"/webhooks/{fake.application_id}/{handle.token}/messages/{handle.original_message['id']}"
    async with running_bot(fake, worker, database=database) as (_, queue):
        assert [s.job_id for s in queue.submitted] == [job_id]
        result = await handle.wait_for(
            lambda r: r.method == "PATCH" and r.path == message_path and r.ok and r.files[-1:] != []
            and r.files[0].filename.startswith("stepgrid-")
        )  # fmt: skip
        assert [f.filename for f in result.files] == ["stepgrid-11.png"]
    job = await database.ledger.get_job(job_id)
    assert job is not None and (job.status, job.attempts) == ("done", 2)


async def test_at_start_up_a_job_that_already_took_the_bot_down_twice_is_answered_as_failed(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        handle, job_id = await finished_job(fake, fake.member)
    await leave_unfinished(database, job_id, handle=handle, attempts=2)
    async with running_bot(fake, worker, database=database) as (_, queue):
        note = await handle.wait_for(lambda r: r.is_followup and r.ephemeral)
        assert content(note) == (
            "Your image could not be made. Stepgrid stopped 2 times while running this job, so it was not run "
            "again. Try fewer steps or a smaller size."
        )
        assert queue.submitted == []
    job = await database.ledger.get_job(job_id)
    assert job is not None and job.status == "failed" and job.error and "stopped 2 times" in job.error


async def test_at_start_up_a_job_whose_token_is_too_old_is_answered_in_the_channel_with_a_mention(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    async with running_bot(fake, worker, database=database):
        handle, job_id = await finished_job(fake, fake.member, seed=12)
    job = await database.ledger.get_job(job_id)
    assert job is not None
    old = job.created_at - timedelta(minutes=20)
    await leave_unfinished(database, job_id, handle=handle, status="queued", attempts=0, created_at=old)
    before = len(handle.requests)
    async with running_bot(fake, worker, database=database):
        channel = f"/channels/{fake.channel.id}/messages"
        posted = await fake.wait_for_request(lambda r: r.method == "POST" and r.path == channel and r.ok)
        result = await fake.wait_for_request(
            lambda r: r.method == "PATCH" and r.path == f"{channel}/{posted.response['id']}" and bool(result_files(r))
        )
        assert (content(posted) or "").startswith(f"<@{fake.member.id}>")
        assert [int(user) for user in posted.json["allowed_mentions"]["users"]] == [fake.member.id]
        assert (content(result) or "").startswith(f"<@{fake.member.id}>")
        assert [f.filename for f in result.files] == ["stepgrid-12.png"]
    assert handle.requests[before:] == []  # the old token was not used
    job = await database.ledger.get_job(job_id)
    assert job is not None and job.status == "done"
