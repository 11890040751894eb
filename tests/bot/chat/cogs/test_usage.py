"""`/usage` and `/usage-server`: how the figures read."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from bot.chat.cogs.usage import member_usage_embed, server_usage_embed
from bot.ops.usage_report import MemberUsage
from bot.storage.usage import LoraTotal, ModelTotal, SchedulerTotal, ServerUsage, UserTotal

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def test_a_members_usage_shows_what_is_left_of_the_quota() -> None:
    usage = MemberUsage(
        jobs=3, images=5, steps=1_234, gpu_seconds=12.25, steps_today=4_900, daily_quota=5_000, resets_at=NOON
    )
    fields = {field.name: field.value for field in member_usage_embed(usage, now_resets_in="3 h").fields}
    assert (fields["Images"], fields["Steps run"], fields["GPU time"]) == ("5", "1,234", "12.2 s")
    assert "4,900 of 5,000 steps used; **100 left**" in fields["Today's quota"]
    assert "(in 3 h, 12:00 UTC)" in fields["Today's quota"]


def test_a_servers_usage_ranks_members_and_schedulers() -> None:
    usage = ServerUsage(
        since=None,
        until=NOON,
        jobs=4,
        images=6,
        steps=300,
        gpu_seconds=3.0,
        members=2,
        failed=1,
        cancelled=0,
        top_users=(UserTotal(22, 3, 5, 200, 2.0), UserTotal(11, 1, 1, 100, 1.0)),
        top_schedulers=(SchedulerTotal("Euler a", 4, 300),),
    )
    embed = server_usage_embed(usage, "7 days")
    fields = {field.name: field.value for field in embed.fields}
    assert embed.title == "Server usage: 7 days"
    assert fields["Jobs"] == "4 (1 failed, 0 cancelled)"
    assert fields["Top members"].splitlines() == [
        "1. <@22>: 200 steps, 5 images, 2.0 s",
        "2. <@11>: 100 steps, 1 images, 1.0 s",
    ]
    assert fields["Top schedulers"] == "1. Euler a: 4 jobs, 300 steps"


def test_a_servers_usage_lists_its_models_old_jobs_as_before_models() -> None:
    usage = ServerUsage(
        since=None, until=NOON, jobs=3, images=3, steps=38, gpu_seconds=4.5, members=1, failed=0, cancelled=0,
        top_users=(), top_schedulers=(),
        top_models=(ModelTotal("", 1, 30, 3.0), ModelTotal("sdxl-turbo", 2, 8, 1.5)),
    )  # fmt: skip
    fields = {field.name: field.value for field in server_usage_embed(usage, "all time").fields}
    assert fields["Models"].splitlines() == [
        "1. — (before models were recorded): 1 jobs, 30 steps, 3.0 s",
        "2. sdxl-turbo: 2 jobs, 8 steps, 1.5 s",
    ]


def test_a_servers_usage_lists_the_lora_sets_its_jobs_used_and_none_without_any() -> None:
    usage = ServerUsage(
        since=None, until=NOON, jobs=3, images=3, steps=38, gpu_seconds=4.5, members=1, failed=0, cancelled=0,
        top_users=(), top_schedulers=(), top_loras=(LoraTotal("pixel 0.8", 2, 11), LoraTotal("pixel 0.8, lcm 1", 1, 6)),
    )  # fmt: skip
    fields = {field.name: field.value for field in server_usage_embed(usage, "all time").fields}
    assert fields["LoRAs"].splitlines() == ["1. pixel 0.8: 2 jobs, 11 steps", "2. pixel 0.8, lcm 1: 1 jobs, 6 steps"]
    plain = dataclasses.replace(usage, top_loras=())
    assert "LoRAs" not in {field.name for field in server_usage_embed(plain, "all time").fields}


def test_usage_is_split_by_kind_of_job_for_the_member_and_the_server() -> None:
    from bot.storage.usage import KindTotal

    kinds = (KindTotal("text2img", 3, 3, 90, 3.0), KindTotal("upscale", 1, 1, 8, 2.5))
    lines = ["text2img: 3 jobs, 3 images, 90 steps, 3.0 s", "upscale: 1 jobs, 1 images, 8 steps, 2.5 s"]
    member = MemberUsage(
        jobs=4, images=4, steps=98, gpu_seconds=5.5, steps_today=98, daily_quota=5_000, resets_at=NOON, by_kind=kinds
    )
    fields = {field.name: field.value for field in member_usage_embed(member, now_resets_in="3 h").fields}
    assert fields["By kind"].splitlines() == lines
    server = ServerUsage(
        since=None, until=NOON, jobs=4, images=4, steps=98, gpu_seconds=5.5, members=1, failed=0, cancelled=0,
        top_users=(), top_schedulers=(), by_kind=kinds,
    )  # fmt: skip
    fields = {field.name: field.value for field in server_usage_embed(server, "7 days").fields}
    assert fields["By kind"].splitlines() == lines
