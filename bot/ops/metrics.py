"""The bot's Prometheus metrics, on a registry of its own (several bots can run in one test process).

Counters move where things happen (the job driver, discord.py's HTTP session); what is true at any
moment (queue length, running jobs, models ready, readiness, worker restarts) is read when scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference.requests import SCHEDULER_NAMES

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_TICK = 0.5  # seconds between two looks at the event loop


@dataclass(frozen=True)
class ShardFigures:
    """One gateway shard this process runs: open or not, and its heartbeat round trip (inf before the first)."""

    shard_id: int
    connected: bool
    latency: float  # seconds
    servers: int


@dataclass(frozen=True)
class LiveFigures:
    """What the bot is doing right now, read at each scrape."""

    queued: int
    running: int
    models_ready: int
    worker_restarts: int
    ready: bool  # what /readyz says
    shards: tuple[ShardFigures, ...] = ()


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveFigures]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        figures = self.read()
        yield GaugeMetricFamily("stepgrid_queue_length", "Jobs waiting for the GPU", value=figures.queued)
        yield GaugeMetricFamily(
            "stepgrid_jobs_running",
            "Jobs accepted and not waiting: on the GPU or being answered",
            value=figures.running,
        )
        yield GaugeMetricFamily("stepgrid_models_ready", "Models loaded and warmed up", value=figures.models_ready)
        yield GaugeMetricFamily(
            "stepgrid_ready", "1 while /readyz answers 200 (Discord, a model, a GPU worker, Redis if used), else 0",
            value=int(figures.ready),
        )  # fmt: skip
        yield CounterMetricFamily(
            "stepgrid_worker_restarts", "GPU worker processes restarted after a crash or hang",
            value=figures.worker_restarts,
        )  # fmt: skip
        connected = GaugeMetricFamily(
            "stepgrid_shard_connected", "1 while this process's gateway shard is open, else 0", labels=["shard"]
        )
        latency = GaugeMetricFamily(
            "stepgrid_shard_latency_seconds", "Heartbeat to acknowledgement on each gateway shard", labels=["shard"]
        )
        servers = GaugeMetricFamily("stepgrid_shard_servers", "Servers on each gateway shard", labels=["shard"])
        for shard in figures.shards:
            connected.add_metric([str(shard.shard_id)], int(shard.connected))
            latency.add_metric([str(shard.shard_id)], shard.latency)
            servers.add_metric([str(shard.shard_id)], shard.servers)
        yield from (connected, latency, servers)


def scheduler_label(scheduler: str) -> str:
    """The scheduler label: one scheduler's name, "several" for a comparison of schedulers, "other" else.

    A label per ordered list of compared schedulers would make every combination and order a series
    of its own (thousands); these keep the label to the scheduler names and two words.
    """
    if "," in scheduler:
        return "several"
    return scheduler if scheduler in SCHEDULER_NAMES else "other"


class Metrics:
    """Every metric the bot exports; `exposition()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("command", "model", "scheduler", "outcome")
        self.jobs = Counter("stepgrid_jobs", "Jobs answered, by outcome (done, failed, cancelled)", labels,
                            registry=self.registry)  # fmt: skip
        self.queue_wait = Histogram(
            "stepgrid_queue_wait_seconds", "Time jobs waited for the GPU", buckets=WAIT_BUCKETS, registry=self.registry
        )
        self.images = Counter("stepgrid_images", "Images delivered (grid cells count one each)", registry=self.registry)
        self.images_withheld = Counter(
            "stepgrid_images_withheld",
            "Pictures the image checker flagged that were not posted in their channel (grid cells count one each)",
            registry=self.registry,
        )
        self.steps = Counter("stepgrid_steps", "Denoising steps run, failed and cancelled jobs included",
                             registry=self.registry)  # fmt: skip
        self.gpu_seconds = Counter("stepgrid_gpu_seconds", "GPU time used by jobs (their share of each batch)",
                                   registry=self.registry)  # fmt: skip
        self.discord_errors = Counter(
            "stepgrid_discord_api_errors", "Discord API answers with an error status (or none: network)", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.discord_rate_limits = Counter(
            "stepgrid_discord_rate_limits", "Discord API answers 429 (rate limited)", registry=self.registry
        )
        self.loop_lag = Histogram(
            "stepgrid_event_loop_lag_seconds", f"How late the event loop woke a {LAG_TICK}s timer",
            buckets=LAG_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._live: _LiveCollector | None = None

    def watch(self, read: Callable[[], LiveFigures]) -> None:
        """Export what `read` returns at each scrape (once; the bot's queue and jobs)."""
        if self._live is None:
            self._live = _LiveCollector(read)
            self.registry.register(self._live)
        else:
            self._live.read = read

    def job_answered(
        self,
        *,
        command: str,
        model: str,
        scheduler: str,
        outcome: str,
        images: int,
        steps: int,
        gpu_seconds: float,
        queue_seconds: float,
    ) -> None:
        """Count a job that got its answer; `scheduler` is one name, or the names of a scheduler comparison."""
        self.jobs.labels(command=command, model=model, scheduler=scheduler_label(scheduler), outcome=outcome).inc()
        self.images.inc(images)
        self.steps.inc(steps)
        self.gpu_seconds.inc(gpu_seconds)
        self.queue_wait.observe(queue_seconds)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def discord_trace(self) -> aiohttp.TraceConfig:
        """Counts discord.py's REST errors and rate limits: every call (the bot's and its interactions'
        webhooks) goes through the one aiohttp session this trace is given to."""
        trace = aiohttp.TraceConfig()

        async def on_end(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
            status = params.response.status  # type: ignore[attr-defined]
            if status >= 400:
                self.discord_errors.labels(status=str(status)).inc()
            if status == 429:
                self.discord_rate_limits.inc()

        async def on_exception(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
            self.discord_errors.labels(status="network").inc()

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_exception)
        return trace

    async def watch_loop_lag(self, tick: float = LAG_TICK) -> None:
        """Run forever: sleep `tick` seconds and record how much later than asked the loop woke us."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(tick)
            self.loop_lag.observe(max(0.0, time.perf_counter() - started - tick))
