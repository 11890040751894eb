"""The bot's Prometheus metrics: each bot its own registry, Discord's errors counted off its HTTP session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.metrics import LiveFigures, Metrics, ShardFigures


def value(metrics: Metrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.fixture
async def discord_like() -> AsyncIterator[str]:
    """An HTTP server answering 200, 404 and 429 as Discord would."""

    async def answer(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.json_response({"retry_after": 0.0} if status == 429 else {}, status=status)

    app = web.Application()
    app.add_routes([web.get("/{status}", answer)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_discord_errors_and_rate_limits_are_counted_from_the_session_trace(discord_like: str) -> None:
    metrics = Metrics()
    async with aiohttp.ClientSession(trace_configs=[metrics.discord_trace()]) as session:
        for status in (200, 404, 429, 429):
            async with session.get(f"{discord_like}/{status}"):
                pass
        with pytest.raises(aiohttp.ClientError):
            async with session.get("http://127.0.0.1:9/"):  # nothing listens on the discard port
                pass
    assert value(metrics, "stepgrid_discord_api_errors_total", status="404") == 1
    assert value(metrics, "stepgrid_discord_api_errors_total", status="429") == 2
    assert value(metrics, "stepgrid_discord_api_errors_total", status="network") == 1
    assert value(metrics, "stepgrid_discord_api_errors_total", status="200") == 0
    assert value(metrics, "stepgrid_discord_rate_limits_total") == 2


def test_each_bot_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.job_answered(command="imagine", model="sd15", scheduler="Euler", outcome="done", images=4, steps=120,
                       gpu_seconds=2.5, queue_seconds=3.0)  # fmt: skip
    labels = {"command": "imagine", "model": "sd15", "scheduler": "Euler", "outcome": "done"}
    assert value(first, "stepgrid_jobs_total", **labels) == 1 and value(second, "stepgrid_jobs_total", **labels) == 0
    assert (value(first, "stepgrid_images_total"), value(first, "stepgrid_steps_total")) == (4, 120)
    assert value(first, "stepgrid_gpu_seconds_total") == 2.5
    assert value(first, "stepgrid_queue_wait_seconds_bucket", le="2.0") == 0
    assert value(first, "stepgrid_queue_wait_seconds_bucket", le="5.0") == 1


def test_live_figures_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    figures = LiveFigures(queued=3, running=1, models_ready=2, worker_restarts=0, ready=True)
    metrics.watch(lambda: figures)
    assert value(metrics, "stepgrid_queue_length") == 3 and value(metrics, "stepgrid_models_ready") == 2
    figures = LiveFigures(queued=0, running=2, models_ready=2, worker_restarts=1, ready=False)
    assert value(metrics, "stepgrid_queue_length") == 0 and value(metrics, "stepgrid_jobs_running") == 2
    assert value(metrics, "stepgrid_worker_restarts_total") == 1 and value(metrics, "stepgrid_ready") == 0


def test_each_shard_shows_whether_it_is_connected_its_latency_and_its_servers() -> None:
    metrics = Metrics()
    shards = (ShardFigures(2, True, 0.041, 1250), ShardFigures(3, False, float("inf"), 1249))
    figures = LiveFigures(queued=0, running=0, models_ready=1, worker_restarts=0, ready=False, shards=shards)
    metrics.watch(lambda: figures)
    assert value(metrics, "stepgrid_shard_connected", shard="2") == 1
    assert value(metrics, "stepgrid_shard_connected", shard="3") == 0
    assert value(metrics, "stepgrid_shard_latency_seconds", shard="2") == 0.041
    assert value(metrics, "stepgrid_shard_servers", shard="3") == 1249


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    metrics = Metrics()
    ticker = asyncio.create_task(metrics.watch_loop_lag(tick=0.01))
    await asyncio.sleep(0)  # the ticker is asleep now
    time.sleep(0.3)  # noqa: ASYNC251  (the point: a blocking call on the loop; the ticker wakes >= 0.29 s late)
    await asyncio.sleep(0.02)  # the ticker's timer is due before this one: it has run when this returns
    ticker.cancel()
    assert value(metrics, "stepgrid_event_loop_lag_seconds_count") >= 1
    assert value(metrics, "stepgrid_event_loop_lag_seconds_sum") >= 0.29
    count = value(metrics, "stepgrid_event_loop_lag_seconds_count")
    assert value(metrics, "stepgrid_event_loop_lag_seconds_bucket", le="0.25") == count - 1  # one wake-up was late


def test_a_scheduler_comparison_is_one_series_whatever_its_schedulers_and_their_order() -> None:
    metrics = Metrics()
    answered = {"command": "compare-schedulers", "model": "tiny", "outcome": "done", "images": 4, "steps": 40,
                "gpu_seconds": 1.0, "queue_seconds": 0.0}  # fmt: skip
    for schedulers in ("Euler a, DDIM", "DDIM, Euler a", "Euler a, DDIM, UniPC"):
        metrics.job_answered(scheduler=schedulers, **answered)  # type: ignore[arg-type]
    metrics.job_answered(scheduler="Euler", **answered)  # type: ignore[arg-type]
    series = {
        sample.labels["scheduler"]: sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "stepgrid_jobs_total"
    }
    assert series == {"several": 3, "Euler": 1}
