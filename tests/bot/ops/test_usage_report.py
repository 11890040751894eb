"""Usage figures: a member's own, a server's over a period, and the operator's CSV export."""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from bot.config import Settings
from bot.limits.server import EffectiveLimits, ServerLimits
from bot.ops.usage_report import (
    CSV_COLUMNS,
    LIMITS_CSV_COLUMNS,
    export_csv,
    export_limits_csv,
    member_usage,
    period_start,
    server_chart,
)
from bot.pictures.render import CHART_COLOURS, CHART_SIZE
from bot.storage.database import Database
from inference.protocol import JobFailed
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest, Request
from tests.bot.backends import Backend
from tests.bot.fakes import FakeWallClock as FakeClock

GUILD, OTHER_GUILD = 1000, 2000
ALICE, BOB, CAROL = 11, 22, 33
NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    """Ten days before the figures are read, so that every period has jobs in it (the ledger's `db` runs on it)."""
    return FakeClock(NOON - timedelta(days=10))


async def finished(
    db: Database,
    request: Request,
    *,
    user: int,
    guild: int | None = GUILD,
    status: str = "done",
    steps_run: int | None = None,
    gpu_seconds: float = 1.0,
) -> str:
    job = await db.ledger.record_job(request, user_id=user, channel_id=5, guild_id=guild)
    if status == "queued":
        return job.id
    await db.ledger.mark_running(job.id)
    run = sum(request.lane_steps) if steps_run is None else steps_run
    if status == "done":
        await db.ledger.mark_done(job.id, gpu_seconds=gpu_seconds, queue_seconds=0.5, steps_run=run)
    elif status == "failed":
        await db.ledger.mark_finished(
            job.id, JobFailed(job.id, "The worker crashed.", gpu_seconds=gpu_seconds, steps_run=run)
        )
    elif status == "cancelled":
        await db.ledger.mark_finished(
            job.id, JobFailed(job.id, "Cancelled.", cancelled=True, gpu_seconds=gpu_seconds, steps_run=run)
        )
    return job.id


async def test_a_member_sees_their_images_steps_gpu_time_and_remaining_quota(db: Database, clock: FakeClock) -> None:
    await finished(db, GenerateRequest(prompt="old", steps=20, count=2), user=ALICE, gpu_seconds=2.0)
    clock.now = NOON
    await finished(db, CompareStepsRequest(prompt="a grid", steps=(5, 10)), user=ALICE, gpu_seconds=1.5)
    await finished(db, GenerateRequest(prompt="x", steps=30), user=ALICE, status="failed", steps_run=10)
    await finished(db, GenerateRequest(prompt="x", steps=40), user=ALICE, status="queued")
    await finished(db, GenerateRequest(prompt="bob's", steps=50), user=BOB)
    await finished(db, GenerateRequest(prompt="elsewhere", steps=50), user=ALICE, guild=OTHER_GUILD)
    limits = EffectiveLimits.combine(ServerLimits(daily_steps_per_user=100), Settings(_env_file=None))  # type: ignore[call-arg]

    usage = await member_usage(db.ledger, GUILD, ALICE, limits)

    assert usage.jobs == 4
    assert usage.images == 2 + 2  # delivered: the failed and queued jobs made none
    assert usage.steps == 40 + 15 + 10
    assert usage.gpu_seconds == pytest.approx(2.0 + 1.5 + 1.0)
    assert usage.steps_today == 15 + 10 + 40  # the queued job's steps are reserved
    assert (usage.daily_quota, usage.quota_remaining) == (100, 35)
    assert usage.resets_at == datetime(2026, 3, 15, tzinfo=UTC)


async def test_a_member_with_no_jobs_has_their_whole_quota(db: Database) -> None:
    limits = EffectiveLimits.combine(None, Settings(_env_file=None))  # type: ignore[call-arg]

    usage = await member_usage(db.ledger, GUILD, CAROL, limits)

    assert (usage.jobs, usage.images, usage.steps, usage.gpu_seconds) == (0, 0, 0, 0.0)
    assert usage.quota_remaining == limits.daily_steps_per_user


async def test_server_usage_totals_top_members_and_schedulers_over_a_period(db: Database, clock: FakeClock) -> None:
    await finished(db, GenerateRequest(prompt="too old", steps=99), user=CAROL)
    clock.now = NOON - timedelta(days=2)
    await finished(db, GenerateRequest(prompt="a", steps=30, scheduler="Heun"), user=ALICE)
    await finished(db, CompareStepsRequest(prompt="b", steps=(5, 10, 20), scheduler="Heun"), user=BOB)
    await finished(
        db, GenerateRequest(prompt="c", steps=10, scheduler="DDIM"), user=BOB, status="cancelled", steps_run=4
    )
    await finished(
        db, GenerateRequest(prompt="d", steps=10, scheduler="DDIM"), user=ALICE, status="failed", steps_run=0
    )
    await finished(db, GenerateRequest(prompt="e", steps=10), user=CAROL, guild=OTHER_GUILD)
    clock.now = NOON

    usage = await db.ledger.server_usage(GUILD, since=period_start("7 days", NOON))

    assert (usage.jobs, usage.images, usage.steps, usage.members, usage.failed, usage.cancelled) == (4, 4, 69, 2, 1, 1)
    assert usage.gpu_seconds == pytest.approx(4.0)
    assert [(u.user_id, u.jobs, u.steps) for u in usage.top_users] == [(BOB, 2, 39), (ALICE, 2, 30)]
    assert [(s.scheduler, s.jobs, s.steps) for s in usage.top_schedulers] == [("Heun", 2, 65), ("DDIM", 2, 4)]

    everything = await db.ledger.server_usage(GUILD, since=period_start("all time", NOON))
    assert (everything.jobs, everything.members) == (5, 3)
    assert [u.user_id for u in (await db.ledger.server_usage(GUILD, since=None, top=1)).top_users] == [CAROL]


def test_periods_start_where_their_names_say() -> None:
    assert period_start("today", NOON) == datetime(2026, 3, 14, tzinfo=UTC)
    assert period_start("7 days", NOON) == NOON - timedelta(days=7)
    assert period_start("all time", NOON) is None
    with pytest.raises(ValueError, match="unknown period"):
        period_start("fortnight", NOON)


async def test_the_csv_export_has_one_row_per_job_with_its_figures(db: Database, backend: Backend) -> None:
    done = await finished(
        db, CompareStepsRequest(prompt="=HYPERLINK(1)", steps=(5, 10), seed=9), user=ALICE, gpu_seconds=1.25
    )
    failed = await finished(db, GenerateRequest(prompt="a, b", steps=30), user=BOB, status="failed", steps_run=3)
    queued = await finished(db, GenerateRequest(prompt="dm", steps=30), user=BOB, guild=None, status="queued")

    out = io.StringIO()
    count = export_csv(backend.path, out, url=backend.url)  # while the bot's database is still open

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 3
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {done, failed, queued}
    assert by_id[done]["status"] == "done"
    assert (by_id[done]["steps"], by_id[done]["steps_run"], by_id[done]["gpu_seconds"]) == ("5;10", "15", "1.250")
    assert by_id[done]["prompt"] == "'=HYPERLINK(1)"  # never a formula in a spreadsheet
    assert (by_id[failed]["error"], by_id[failed]["prompt"]) == ("The worker crashed.", "a, b")
    assert (by_id[queued]["guild_id"], by_id[queued]["finished_at"], by_id[queued]["steps_run"]) == ("", "", "")


async def test_the_csv_export_says_which_jobs_were_films_and_of_how_many_frames(db: Database, backend: Backend) -> None:
    film = await finished(db, GenerateRequest(prompt="a fox", steps=12, film=True), user=ALICE)
    plain = await finished(db, GenerateRequest(prompt="a fox", steps=12), user=ALICE)
    grid = await finished(db, CompareStepsRequest(prompt="a fox", steps=(5, 10)), user=ALICE)

    out = io.StringIO()
    export_csv(backend.path, out, url=backend.url)

    by_id = {row["id"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}
    assert [by_id[job]["film_frames"] for job in (film, plain, grid)] == ["12", "", ""]


async def test_the_csv_export_reads_a_database_whose_folder_has_a_hash_in_its_name(tmp_path: Path) -> None:
    path = tmp_path / "bots#1" / "stepgrid.sqlite3"
    path.parent.mkdir()
    database = Database(path, Settings(_env_file=None))  # type: ignore[call-arg]
    await database.start()
    try:
        job = await finished(database, GenerateRequest(prompt="a", steps=4), user=ALICE)
    finally:
        await database.close()

    out = io.StringIO()
    assert export_csv(path, out) == 1
    assert [row["id"] for row in csv.DictReader(io.StringIO(out.getvalue()))] == [job]
    assert sorted(os.listdir(tmp_path)) == ["bots#1"]  # not an empty database at tmp_path / "bots"


def test_exporting_a_missing_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No database at"):
        export_csv(tmp_path / "nope.sqlite3", io.StringIO())


async def test_server_usage_and_the_csv_name_each_jobs_model(db: Database, backend: Backend, clock: FakeClock) -> None:
    turbo = await finished(db, GenerateRequest(prompt="a", steps=4, model="sdxl-turbo"), user=ALICE, gpu_seconds=0.5)
    await finished(db, CompareStepsRequest(prompt="b", steps=(1, 2, 4), model="sdxl-turbo"), user=BOB)
    old = await finished(db, GenerateRequest(prompt="c", steps=30), user=BOB, gpu_seconds=3.0)  # before models

    usage = await db.ledger.server_usage(GUILD, since=None, until=NOON)
    assert [(m.model, m.jobs, m.steps, m.gpu_seconds) for m in usage.top_models] == [
        ("", 1, 30, 3.0),
        ("sdxl-turbo", 2, 11, 1.5),
    ]
    out = io.StringIO()
    export_csv(backend.path, out, url=backend.url)
    by_id = {row["id"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}
    assert (by_id[turbo]["model"], by_id[old]["model"]) == ("sdxl-turbo", "")


async def test_the_csv_export_reads_page_by_page_so_the_bot_can_write_between_pages(
    db: Database, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.ops.usage_report

    monkeypatch.setattr(bot.ops.usage_report, "EXPORT_PAGE", 2)
    ids = [await finished(db, GenerateRequest(prompt=f"job {n}", steps=4), user=ALICE) for n in range(5)]
    out = io.StringIO()
    assert (
        export_csv(backend.path, out, url=backend.url) == 5
    )  # same timestamps: the id orders them, no row twice or lost
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert sorted(row["id"] for row in rows) == sorted(ids) and len({row["id"] for row in rows}) == 5


def test_an_empty_ledger_exports_just_the_header(tmp_path: Path) -> None:
    from bot.storage.migrate import upgrade_database

    upgrade_database(tmp_path / "empty.sqlite3")
    out = io.StringIO()
    assert export_csv(tmp_path / "empty.sqlite3", out) == 0
    assert out.getvalue().strip() == ",".join(CSV_COLUMNS)


async def test_the_limits_history_exports_one_row_per_change_oldest_first(
    db: Database, backend: Backend, clock: FakeClock
) -> None:
    await db.server_limits.set_limits(GUILD, ALICE, max_steps=40, banned_words="=cmd, fox")
    clock.advance(hours=1)
    await db.server_limits.set_limits(OTHER_GUILD, BOB, default_steps=12)
    clock.advance(hours=1)
    await db.server_limits.reset_limits(GUILD, BOB, ["max_steps"])
    await finished(db, GenerateRequest(prompt="a fox", steps=4), user=ALICE)  # jobs are not limit changes

    out = io.StringIO()
    count = export_limits_csv(backend.path, out, url=backend.url)  # while the bot's database is open

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 4
    assert tuple(rows[0]) == LIMITS_CSV_COLUMNS
    assert [(row["guild_id"], row["user_id"], row["field"]) for row in rows] == [
        (str(GUILD), str(ALICE), "max_steps"),
        (str(GUILD), str(ALICE), "banned_words"),
        (str(OTHER_GUILD), str(BOB), "default_steps"),
        (str(GUILD), str(BOB), "max_steps"),
    ]
    assert [(row["old_value"], row["new_value"]) for row in rows[::3]] == [("null", "40"), ("40", "null")]
    assert rows[1]["new_value"] == '["=cmd", "fox"]'  # JSON; starts with "[", so no formula either
    assert rows[0]["changed_at"] < rows[2]["changed_at"] < rows[3]["changed_at"]


def test_the_limits_history_of_a_new_database_is_just_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli.main import main
    from bot.storage.migrate import upgrade_database

    upgrade_database(tmp_path / "empty.sqlite3")
    monkeypatch.setenv("STEPGRID_DATABASE_PATH", str(tmp_path / "empty.sqlite3"))
    monkeypatch.chdir(tmp_path)

    assert main(["usage", "--limits-csv"]) == 0
    assert capsys.readouterr().out.strip() == ",".join(LIMITS_CSV_COLUMNS)


async def test_a_scheduler_grid_counts_as_a_job_of_each_of_its_schedulers(db: Database, clock: FakeClock) -> None:
    clock.now = NOON - timedelta(hours=1)
    await finished(db, GenerateRequest(prompt="a", steps=30, scheduler="Heun"), user=ALICE)
    await finished(db, CompareSchedulersRequest("b", schedulers=("Heun", "DDIM"), steps=(2, 4)), user=BOB)
    clock.now = NOON
    usage = await db.ledger.server_usage(GUILD, since=None)
    assert [(s.scheduler, s.jobs, s.steps) for s in usage.top_schedulers] == [("Heun", 2, 36), ("DDIM", 1, 6)]


async def test_images_per_day_counts_a_servers_delivered_images_by_day_and_scheduler(
    db: Database, clock: FakeClock
) -> None:
    clock.now = NOON - timedelta(days=2)
    await finished(db, GenerateRequest(prompt="a", steps=4, count=3, scheduler="Heun"), user=ALICE)
    await finished(db, GenerateRequest(prompt="b", steps=4, scheduler="Heun"), user=BOB, status="failed")
    await finished(db, GenerateRequest(prompt="c", steps=4, scheduler="Heun"), user=BOB, guild=OTHER_GUILD)
    clock.now = NOON
    await finished(db, CompareStepsRequest(prompt="d", steps=(2, 4), scheduler="DDIM"), user=BOB)
    await finished(db, CompareSchedulersRequest("e", schedulers=("Euler a", "DDIM", "Heun"), steps=(2, 4)), user=BOB)

    rows = await db.ledger.images_per_day(GUILD, since=NOON - timedelta(days=30), until=NOON + timedelta(hours=1))
    assert [(row.day.isoformat(), row.scheduler, row.images) for row in rows] == [
        ("2026-03-12", "Heun", 3),
        ("2026-03-14", "DDIM", 2 + 2),  # the scheduler grid's DDIM row adds its two cells
        ("2026-03-14", "Euler a", 2),
        ("2026-03-14", "Heun", 2),
    ]


async def test_the_server_chart_is_a_png_of_the_promised_size(db: Database, clock: FakeClock) -> None:
    clock.now = NOON - timedelta(days=40)  # older than the chart: left out
    await finished(db, GenerateRequest(prompt="old", steps=4, count=4), user=ALICE)
    clock.now = NOON
    await finished(db, GenerateRequest(prompt="new", steps=4, count=2), user=ALICE)

    image = Image.open(io.BytesIO(await server_chart(db.ledger, GUILD, now=NOON)))
    assert image.format == "PNG" and image.size == CHART_SIZE
    today = image.convert("RGB").crop((CHART_SIZE[0] - 60, 90, CHART_SIZE[0] - 30, CHART_SIZE[1]))  # the last bar
    assert CHART_COLOURS[0] in {colour for _, colour in today.getcolors(maxcolors=1 << 16) or []}


async def test_hourly_activity_counts_jobs_steps_and_the_mean_wait_of_every_server(
    db: Database, clock: FakeClock
) -> None:
    clock.now = NOON - timedelta(minutes=90)
    await finished(db, GenerateRequest(prompt="a", steps=10), user=ALICE)
    await finished(db, GenerateRequest(prompt="b", steps=20), user=BOB, guild=OTHER_GUILD)
    clock.now = NOON
    await finished(db, GenerateRequest(prompt="c", steps=5), user=BOB, status="queued")

    hours = await db.ledger.hourly_activity(since=NOON - timedelta(hours=24), until=NOON + timedelta(hours=1))
    assert [(h.hour.isoformat(), h.jobs, h.steps, h.mean_wait) for h in hours] == [
        ("2026-03-14T10:00:00+00:00", 2, 30, 0.5),
        ("2026-03-14T12:00:00+00:00", 1, 0, None),  # queued: nothing ran, no wait known yet
    ]


async def test_server_usage_counts_the_lora_sets_jobs_used(db: Database, clock: FakeClock) -> None:
    pixel = (("pixel", 0.8),)
    await finished(db, GenerateRequest(prompt="a", steps=4, loras=pixel), user=ALICE)
    await finished(db, CompareStepsRequest(prompt="b", steps=(1, 2, 4), loras=pixel), user=BOB)
    await finished(db, GenerateRequest(prompt="c", steps=6, loras=(("pixel", 0.8), ("lcm", 1.0))), user=BOB)
    await finished(db, GenerateRequest(prompt="d", steps=30), user=BOB)  # no LoRA: not counted

    usage = await db.ledger.server_usage(GUILD, since=None, until=NOON)
    assert [(row.loras, row.jobs, row.steps) for row in usage.top_loras] == [
        ("pixel 0.8", 2, 11),
        ("pixel 0.8, lcm 1", 1, 6),
    ]
