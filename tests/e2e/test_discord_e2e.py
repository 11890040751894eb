"""Stepgrid end to end: the real discord.py client against the fake Discord, the tiny model in a real worker.

One spawned worker serves the whole module (spawning costs seconds); each test starts its own bot on its
own fake Discord. Waits are on what the fake records (with a generous hang guard), never on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.storage.database import Database
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import (
    Heartbeat,
    SharedQueue,
    button,
    content,
    custom_ids,
    e2e_settings,
    embed_fields,
    image_of,
    is_result,
    refusal_after_defer,
    result_files,
    running_bot,
    wait_for_progress,
    wait_for_result,
    worker_paused,
)
from tests.fake_discord import FakeDiscord, FakeMember, InteractionHandle, running_fake
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GRID_PATH = Path("/tmp/stepgrid-e2e/compare-steps-grid.png")
SCHEDULER_GRID_PATH = Path("/tmp/stepgrid-e2e/compare-schedulers-grid.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Eight lanes of 143..150 steps at 512x512 fill the worker's batch (8 lanes) for ~10 s on one CPU thread; with
# the worker paused (SIGSTOP) it can't end at all, so jobs submitted meanwhile wait until the test cancels it.
BLOCKER_STEPS = ",".join(str(steps) for steps in range(143, 151))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    """One real worker running the tiny model for the whole module."""
    async with started_queue(
        LocalJobQueue(tiny_config, max_length=50, hang_seconds=120)
    ) as queue:  # one OpenMP thread: conftest.py
        yield queue


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    """A fake Discord on the module's loop; fails the test if the bot hit a route the fake doesn't know."""
    async with running_fake(timeout=60.0) as fake:  # a hang guard for jobs on a busy CPU, not a timing expectation
        yield fake


def imagine_options(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"prompt": "a lighthouse at dusk", "steps": 8, "size": "256", "scheduler": "Euler"}
    options.update(overrides)
    return options


async def start_blocker(fake: FakeDiscord, queue: SharedQueue, owner: FakeMember) -> tuple[InteractionHandle, str]:
    """A comparison that fills the worker's batch, running (its first progress shown) when this returns."""
    handle = await fake.invoke(
        "compare-steps", {"prompt": "blocker", "steps": BLOCKER_STEPS, "size": "512", "seed": 1}, user=owner
    )
    await wait_for_progress(handle, "step ")
    job_id = next(s.job_id for s in queue.submitted if s.user_id == str(owner.id))
    assert job_id is not None
    return handle, job_id


async def click_cancel(fake: FakeDiscord, handle: InteractionHandle, user: FakeMember) -> InteractionHandle:
    """Press Cancel on a job's message as `user`; returns the click after its ephemeral answer."""
    message = handle.original_message
    click = await fake.click(message, button(message, "cancel"), user=user)
    await click.wait_for_callback()
    return click


async def write_file(path: Path, data: bytes) -> None:
    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    await asyncio.to_thread(write)


# --- 1. /imagine ---------------------------------------------------------------------------------


async def test_imagine_defers_first_shows_progress_then_the_png_with_its_seed(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker) as (_, queue):
        release = queue.hold_next_job()
        handle = await fake.invoke("imagine", imagine_options(seed=12345, steps=12, size="256x320"))

        callback = await handle.wait_for_callback()
        assert handle.requests[0] is callback, "the interaction is deferred before anything else"
        assert callback.json["type"] == 5 and not callback.ephemeral

        progress = await wait_for_progress(handle, "step ")
        release.set()
        assert re.search(r"step \d+/12", content(progress) or "")
        assert [f.filename for f in progress.files] == ["preview.png"], "a latent preview rides with the progress"
        assert any(cid.startswith("stepgrid:cancel:") for cid in custom_ids(progress.json))

        final = await wait_for_result(handle)
        [png] = result_files(final)
        assert png.data.startswith(PNG_MAGIC) and png.filename == "stepgrid-12345.png"
        assert image_of(png.data).size == (256, 320)
        fields = embed_fields(final)
        assert fields["Seed"] == "12345" and fields["Steps"] == "12" and fields["Size"] == "256×320"
        assert fields["Scheduler"] == "Euler"
        assert all(r.ok for r in handle.requests)
        assert content(final) in (None, ""), "the final message is the image and its embed"
        assert handle.requests.index(progress) < handle.requests.index(final)


async def test_imagine_with_the_same_seed_twice_gives_identical_bytes(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker):
        first = await fake.invoke("imagine", imagine_options(seed=99, size="256x320"))
        [one] = result_files(await wait_for_result(first))
        second = await fake.invoke("imagine", imagine_options(seed=99, size="256x320"))
        [two] = result_files(await wait_for_result(second))
    assert one.data == two.data


# --- 2. /compare-steps -----------------------------------------------------------------------------


async def test_compare_steps_default_is_one_grid_of_six_labelled_cells(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker):
        handle = await fake.invoke("compare-steps", {"prompt": "a red fox in the snow", "seed": 42, "size": "256"})
        final = await wait_for_result(handle)

    assert len(final.files) == 1, "one attachment: the grid"
    grid = final.files[0]
    await write_file(GRID_PATH, grid.data)
    image = image_of(grid.data)
    assert image.format == "PNG"
    assert embed_fields(final)["Steps"] == "5, 10, 20, 30, 40, 50"
    assert embed_fields(final)["Seed"] == "42"

    # 3 x 2 cells of 256 px, separated by equal gaps, each with a caption strip under it, and two
    # footer lines (what the seconds and the Δ are) as high as a caption strip.
    cell, columns, rows, footer_lines = 256, 3, 2, 2
    width, height = image.size
    gap, remainder = divmod(width - columns * cell, columns + 1)
    assert remainder == 0 and 0 < gap < 32, f"unexpected grid width {width}"
    strip, remainder = divmod(height - rows * cell - (rows + 2) * gap, rows + footer_lines)
    assert remainder == 0 and 12 <= strip <= 64, f"unexpected grid height {height}"
    assert (content(final) or "").startswith("For this prompt and seed: Euler a ")

    rgb = image.convert("RGB")
    for index in range(columns * rows):
        left = gap + (index % columns) * (cell + gap)
        top = gap + (index // columns) * (cell + strip + gap) + cell
        caption = rgb.crop((left, top, left + cell, top + strip))
        colours = caption.getcolors(maxcolors=cell * strip)
        assert colours is not None
        background = max(colours)[1]
        text_pixels = sum(n for n, colour in colours if sum(colour) > sum(background) + 200)
        assert text_pixels > 30, f"cell {index} has no caption text"


async def test_compare_schedulers_is_answered_with_a_labelled_grid_and_the_sweet_spot_in_words(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker):
        options = {"prompt": "a red fox in the snow", "seed": 42, "size": "256", "steps": "2,4,8"}
        final = await wait_for_result(await fake.invoke("compare-schedulers", options))

    schedulers = ["Euler a", "DPM++ 2M Karras", "UniPC", "DDIM"]  # the default rows for an SD model
    assert len(final.files) == 1, "one attachment: the grid"
    await write_file(SCHEDULER_GRID_PATH, final.files[0].data)
    fields = embed_fields(final)
    assert fields["Schedulers"] == ", ".join(schedulers) and fields["Steps"] == "2, 4, 8"
    sentence = content(final) or ""
    assert sentence.startswith("For this prompt and seed: ")
    for name in schedulers:  # each row in words: where it settles, or that it doesn't
        assert re.search(re.escape(name) + r" (settles at \d+ steps?|keeps changing|has not settled)", sentence)
    # 4 rows x 3 columns of 256 px cells, scheduler names on the left, step counts on top.
    image = image_of(final.files[0].data)
    assert image.width > 3 * 256 + 100 and image.height > 4 * 256 + 5 * 28


# --- 3. bad options ------------------------------------------------------------------------------

BAD_OPTIONS = [
    pytest.param("imagine", imagine_options(steps=0), ["steps must be 1 to 150", "got 0"], id="steps-0"),
    pytest.param("imagine", imagine_options(steps=500), ["steps must be 1 to 150", "got 500"], id="steps-500"),
    pytest.param("imagine", imagine_options(scheduler="Turbo"), ["Unknown scheduler 'Turbo'", "Euler a"], id="sched"),
    pytest.param("imagine", imagine_options(size="513"), ["multiple of 8", "got 513"], id="size-513"),
    pytest.param("imagine", imagine_options(prompt=""), ["prompt is empty"], id="empty-prompt"),
    pytest.param("imagine", imagine_options(prompt="   "), ["prompt is empty"], id="blank-prompt"),
    pytest.param("compare-steps", {"prompt": "fox", "steps": "5,x,10"}, ["like 5,10,20,30"], id="steps-5,x,10"),
    pytest.param(
        "compare-steps",
        {"prompt": "fox", "steps": ",".join(str(n) for n in range(1, 14))},
        ["2 to 12 step counts", "got 13"],
        id="13-cells",
    ),
    pytest.param("compare-steps", {"prompt": "", "size": "256"}, ["prompt is empty"], id="compare-empty-prompt"),
]


@pytest.mark.parametrize(("command", "options", "expected"), BAD_OPTIONS)
async def test_bad_options_get_an_ephemeral_error_and_queue_nothing(
    fake: FakeDiscord,
    worker: LocalJobQueue,
    caplog: pytest.LogCaptureFixture,
    command: str,
    options: dict[str, Any],
    expected: list[str],
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bot(fake, worker) as (_, queue):
        handle = await fake.invoke(command, options)
        answer = await handle.wait_for_callback()
        assert answer.json["type"] == 4 and answer.ephemeral
        message = content(answer) or ""
        for part in expected:
            assert part in message
        assert queue.submitted == [], "nothing reached the job queue"
    assert len(handle.requests) == 1, "one answer, no follow-ups"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text


# --- 3b. the Steps film ------------------------------------------------------------------------------


async def test_the_steps_film_button_is_answered_with_an_animation_of_every_step(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    async with running_bot(fake, worker) as (_, queue):
        first = await fake.invoke("imagine", imagine_options(prompt="café crème 狐 🦊", seed=21, steps=5))
        [png] = result_files(await wait_for_result(first))
        assert "parameters" in image_of(png.data).info, "the posted PNG carries A1111's parameters"
        message = first.original_message

        click = await fake.click(message, button(message, "film"))
        assert (await click.wait_for_callback()).json["type"] == 5
        answer = await wait_for_result(click)
        film, image = result_files(answer)
        assert film.filename.startswith("stepgrid-film-21.") and film.filename.endswith((".webp", ".gif"))
        animation = image_of(film.data)
        assert animation.n_frames == 5, "one frame per step"
        assert image.data == png.data, "the same run: model, seed, scheduler and steps"
        assert embed_fields(answer)["Steps film"].startswith("5 frames, one per step")
        assert not any(cid.startswith("stepgrid:film:") for cid in custom_ids(answer.json))
        assert len([s for s in queue.submitted if s.request.film]) == 1, "one film job, answered once"
        assert len([r for r in click.requests if is_result(r)]) == 1
        film_message = click.original_message
        details = await fake.click(film_message, button(film_message, "details"))
        assert embed_fields(await details.wait_for_callback())["Steps film"] == "5 frames, one per step"

        option = await fake.invoke("imagine", imagine_options(seed=22, steps=3, film=True))
        film, _ = result_files(await wait_for_result(option))
        assert image_of(film.data).n_frames == 3


# --- 4. buttons, before and after a restart ----------------------------------------------------------


async def test_reroll_and_compare_buttons_work_before_and_after_a_restart(
    fake: FakeDiscord, worker: LocalJobQueue, tmp_path: Path
) -> None:
    settings = e2e_settings()
    path = tmp_path / "stepgrid.sqlite3"

    database = Database(path, settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database):
            first = await fake.invoke("imagine", imagine_options(seed=7))
            await wait_for_result(first)
            message = first.original_message
            assert message is not None
            job_id = button(message, "reroll").rsplit(":", 1)[1]

            reroll = await fake.click(message, button(message, "reroll"))
            assert (await reroll.wait_for_callback()).json["type"] == 5
            rerolled = embed_fields(await wait_for_result(reroll))
            assert rerolled["Seed"] != "7" and rerolled["Steps"] == "8" and rerolled["Size"] == "256×256"

            compare = await fake.click(message, button(message, "compare"))
            grid = await wait_for_result(compare)
            assert embed_fields(grid)["Steps"] == "5, 8, 10, 20, 30, 40, 50"
            grid_size = image_of(grid.files[0].data).size
    finally:
        await database.close()

    # A new process: a new bot, the same database file, the same Discord; the old message's buttons.
    database = Database(path, settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
            reroll = await fake.click(int(message["id"]), button(message, "reroll"))
            rerolled = embed_fields(await wait_for_result(reroll))
            assert rerolled["Seed"] != "7" and rerolled["Steps"] == "8"

            compare = await fake.click(int(message["id"]), button(message, "compare"))
            grid = await wait_for_result(compare)
            assert embed_fields(grid)["Seed"] == "7"
            assert image_of(grid.files[0].data).size == grid_size

            details = await fake.click(int(message["id"]), button(message, "details"))
            answer = await details.wait_for_callback()
            assert answer.ephemeral and embed_fields(answer)["Requested by"] == f"<@{fake.member.id}>"

            submitted = [s.job_id for s in queue.submitted]
            assert len(submitted) == 2
            for child in submitted:
                assert child is not None
                row = await database.ledger.get_job(child)
                assert row is not None and row.parent_job_id == job_id
    finally:
        await database.close()


# --- 5. a burst from many users ----------------------------------------------------------------------


async def test_twenty_interactions_from_five_users_are_all_answered_in_fair_order(
    fake: FakeDiscord, worker: LocalJobQueue, tmp_path: Path, record_property: Any
) -> None:
    users = [fake.guild.member(fake.new_id(), f"user{i}") for i in range(5)]
    blocker_owner = fake.guild.member(fake.new_id(), "blocker")
    settings = e2e_settings(max_concurrent_jobs_per_user=4)
    database = Database(tmp_path / "stepgrid.sqlite3", settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
            blocker, blocker_id = await start_blocker(fake, queue, blocker_owner)
            async with Heartbeat() as heartbeat:
                with worker_paused(worker):  # the blocker holds every lane until the burst is queued
                    # The worst case for a first-come queue: each user's four jobs arrive back to back.
                    handles = [
                        await fake.invoke("imagine", imagine_options(prompt=f"{user.user.name} #{n}", seed=n, steps=6),
                                          user=user)
                        for user in users
                        for n in range(4)
                    ]  # fmt: skip
                    for handle in handles:
                        assert (await handle.wait_for_callback()).json["type"] == 5
                        await wait_for_progress(handle, "Queued — position")  # what the user sees while waiting
                    burst = [s.job_id for s in queue.submitted if s.user_id != str(blocker_owner.id)]
                    waiting = sorted(burst, key=lambda job: queue.position(job) or 0)
                cancelled = await click_cancel(fake, blocker, blocker_owner)
                assert content(cancelled.callbacks[0]) == "Cancelled."
                results = [await wait_for_result(handle) for handle in handles]
            await blocker.wait_for(lambda r: r.method == "DELETE")
    finally:
        await database.close()

    assert all(len(result_files(r)) == 1 for r in results), "every interaction got its image"
    assert blocker_id in queue.job_ids("failed")
    user_ids = {str(user.id) for user in users}
    # While the worker was busy, the 20 waited in round-robin order: one job per user a round...
    assert len(waiting) == 20
    planned = [queue.user_of(job) for job in waiting]
    for round_ in range(4):
        assert set(planned[5 * round_ : 5 * round_ + 5]) == user_ids, f"round {round_} of the queue: {planned}"
    # ...and they started in that order.
    started = [job for job in queue.job_ids("started") if job != blocker_id]
    assert started == waiting

    # Reported, not asserted: a timing bound would only measure how busy the test machine is.
    record_property("longest_event_loop_gap_ms", round(heartbeat.longest * 1000, 1))
    print(f"\nevent-loop heartbeat during the burst of 20: {heartbeat.summary()}")


async def test_a_burst_from_one_member_is_held_to_the_concurrent_job_limit(
    fake: FakeDiscord, worker: LocalJobQueue, tmp_path: Path
) -> None:
    settings = e2e_settings(max_concurrent_jobs_per_user=3)
    database = Database(tmp_path / "stepgrid.sqlite3", settings)
    await database.start()
    try:
        async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
            with worker_paused(worker):  # no job can finish: every accepted one stays active
                handles = [await fake.invoke("imagine", imagine_options(seed=n)) for n in range(5)]
                # Each is acknowledged first; the ledger's count then refuses the two over the limit.
                refused = [await refusal_after_defer(handle) for handle in handles[3:]]
            for handle in handles[:3]:
                await wait_for_result(handle)
    finally:
        await database.close()

    assert len(queue.submitted) == 3
    assert all(text.startswith("This server allows 3 jobs at a time per member") for text in refused)


# --- 6. the attachment limit -------------------------------------------------------------------------


async def test_an_attachment_over_the_limit_is_reencoded_to_fit(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    limit = 40_000
    async with running_bot(fake, worker):
        handle = await fake.invoke("imagine", imagine_options(seed=3), attachment_size_limit=limit)
        final = await wait_for_result(handle)

    [upload] = result_files(final)
    assert len(upload.data) <= limit
    image = image_of(upload.data)
    assert image.format in ("WEBP", "JPEG")
    assert upload.filename.endswith({"WEBP": ".webp", "JPEG": ".jpg"}[image.format])
    assert not [r for r in handle.requests if r.error_code == 40005], "no upload was refused"


# --- the token expiry, Cancel while queued ----------------------------------------------------------


async def test_after_the_token_expires_the_result_goes_to_the_channel(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    async with running_bot(fake, worker) as (_, queue):
        release = queue.hold_next_job()
        start = len(fake.requests)
        handle = await fake.invoke("imagine", imagine_options(seed=5))
        await wait_for_progress(handle, "step ")
        fake.expire_token(handle)  # as if 15 minutes passed
        release.set()
        result = await fake.wait_for_request(
            lambda r: r.ok and r.path.startswith(f"/channels/{fake.channel.id}/messages") and bool(result_files(r))
        )
        # The first message in the channel carries the mention (a progress note or the result itself).
        posted = next(
            r
            for r in fake.requests[start:]
            if r.ok and r.method == "POST" and r.path == f"/channels/{fake.channel.id}/messages"
        )

    [message] = [m for m in fake.channel_messages(fake.channel.id) if "webhook_id" not in m]
    assert message["content"].startswith(f"<@{fake.member.id}>")
    assert [a["filename"] for a in message["attachments"]] == ["stepgrid-5.png"]
    assert [int(u) for u in posted.json["allowed_mentions"]["users"]] == [fake.member.id]
    posted = result
    assert embed_fields(posted)["Seed"] == "5"


async def test_cancel_while_queued_removes_the_job_and_only_its_owner_may(
    fake: FakeDiscord, worker: LocalJobQueue
) -> None:
    blocker_owner = fake.guild.member(fake.new_id(), "blocker")
    bystander = fake.guild.member(fake.new_id(), "bob")
    async with running_bot(fake, worker) as (_, queue):
        blocker, blocker_id = await start_blocker(fake, queue, blocker_owner)
        with worker_paused(worker):  # the blocker holds every lane: the next job waits
            handle = await fake.invoke("imagine", imagine_options(seed=11))
            await wait_for_progress(handle, "Queued — position 1")
            job_id = queue.submitted[-1].job_id

            refused = await click_cancel(fake, handle, bystander)
            assert refused.callbacks[0].ephemeral
            assert "Only the member who started this job" in (content(refused.callbacks[0]) or "")

            cancelled = await click_cancel(fake, handle, fake.member)
            assert cancelled.callbacks[0].ephemeral and content(cancelled.callbacks[0]) == "Cancelled."
            await handle.wait_for(lambda r: r.method == "DELETE" and r.path.endswith("/messages/@original"))

        # The running blocker is cancelled the same way.
        await click_cancel(fake, blocker, blocker_owner)
        await blocker.wait_for(lambda r: r.method == "DELETE")

    assert job_id in queue.job_ids("failed") and job_id not in queue.job_ids("started")
    assert blocker_id in queue.job_ids("failed") and blocker_id not in queue.job_ids("result")
    assert not [r for r in handle.requests if result_files(r)], "a cancelled job posts no image"
