"""The endpoint's health check against a real SQLite file: 503 with the reason when the database takes no write."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime

import discord
import pytest
from aiohttp.test_utils import make_mocked_request

import bot.ops.http
from bot.config import Settings
from bot.jobs.service import JobService
from bot.ops.http import OperatorEndpoint
from bot.ops.metrics import Metrics
from bot.storage.database import Database
from bot.storage.models import JobRow
from inference.queues.base import WorkerStatus
from inference.queues.eta import Eta
from tests.bot.fakes import TURBO, ScriptedQueue


def endpoint_for(database: Database, **settings_values: object) -> OperatorEndpoint:
    queue = ScriptedQueue()
    settings = Settings(_env_file=None, **{"http_port": 8080, **settings_values})  # type: ignore[arg-type]
    client = discord.Client(intents=discord.Intents.none())
    return OperatorEndpoint(client, settings, jobs=JobService(queue), queue=queue, metrics=Metrics(), database=database)


async def health(endpoint: OperatorEndpoint) -> tuple[int, dict[str, str]]:
    response = await endpoint.healthz(make_mocked_request("GET", "/healthz"))
    assert response.text is not None
    return response.status, json.loads(response.text)


async def test_healthz_is_ok_while_the_database_takes_writes(database: Database) -> None:
    assert await health(endpoint_for(database)) == (200, {"status": "ok", "database": "writable"})


async def test_healthz_is_503_while_another_program_holds_the_database_locked(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.ops.http, "HEALTH_WRITE_TIMEOUT", 0.5)  # the write waits for the lock (busy_timeout)
    other = sqlite3.connect(database.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer that never commits
    try:
        status, body = await health(endpoint_for(database))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert status == 503 and body == {"status": "unhealthy", "problem": "the database took no write within 0.5s"}


async def readiness(endpoint: OperatorEndpoint) -> tuple[int, list[str]]:
    response = await endpoint.readyz(make_mocked_request("GET", "/readyz"))
    assert response.text is not None
    return response.status, json.loads(response.text)["reasons"]


async def test_readyz_names_each_reason_it_is_not_ready(database: Database) -> None:
    endpoint = endpoint_for(database)  # a client that never connected
    assert await readiness(endpoint) == (503, ["not connected to Discord", "no model is ready yet (loading)"])
    assert isinstance(endpoint.queue, ScriptedQueue)
    endpoint.queue.load(TURBO)
    assert await readiness(endpoint) == (503, ["not connected to Discord"])


async def test_readyz_and_metrics_are_not_ready_while_the_worker_restarts_or_redis_is_down(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = endpoint_for(database)
    monkeypatch.setattr(endpoint, "connected", lambda: True)
    assert isinstance(endpoint.queue, ScriptedQueue)
    endpoint.queue.load(TURBO)  # what the worker reported before it crashed: the queue still knows it
    worker = WorkerStatus(name="local worker", state="restarting", device="cuda", models=(TURBO.name,))
    monkeypatch.setattr(endpoint.queue, "workers", lambda: [worker])
    assert await readiness(endpoint) == (503, ["no GPU worker is ready (restarting)"])

    assert b"stepgrid_ready 0.0" in endpoint.metrics.exposition()

    monkeypatch.setattr(endpoint.queue, "workers", lambda: [worker, dataclasses.replace(worker, state="ready")])
    assert await readiness(endpoint) == (200, [])
    assert b"stepgrid_ready 1.0" in endpoint.metrics.exposition()

    # Redis down: the agents were ready when last seen, but no job reaches them (nor any answer the bot).
    problem = (
        "Redis at redis://10.0.0.5:6379/0 is unreachable (Connection refused); start it, or check "
        "STEPGRID_REDIS_URL; jobs wait meanwhile"
    )
    monkeypatch.setattr(ScriptedQueue, "connection_problem", property(lambda queue: problem))
    assert await readiness(endpoint) == (503, [problem])
    assert b"stepgrid_ready 0.0" in endpoint.metrics.exposition()


class EstimatingQueue(ScriptedQueue):
    """A queue with one waiting and one running job, and estimates for both."""

    def position(self, job_id: str) -> int | None:
        return 2 if job_id == "waiting" else None

    def estimate(self, job_id: str) -> Eta | None:
        return {"waiting": Eta(left=95.0, starts_in=41.0), "running": Eta(left=12.3)}.get(job_id)


def test_the_status_page_says_when_jobs_start_and_how_long_they_have_left() -> None:
    queue = EstimatingQueue()
    settings = Settings(_env_file=None, http_port=8080)  # type: ignore[call-arg]
    client = discord.Client(intents=discord.Intents.none())
    endpoint = OperatorEndpoint(client, settings, jobs=JobService(queue), queue=queue, metrics=Metrics(), database=None)
    accepted = datetime(2026, 1, 1, tzinfo=UTC)

    def status(job_id: str, state: str) -> str:
        row = JobRow(
            id=job_id, command="imagine", model="tiny", status=state, guild_id=None, created_at=accepted, params={}
        )
        return endpoint._job_line(row).status

    assert status("waiting", "queued") == "queued (#2) · starts in about 40 s"
    assert status("running", "running") == "running · about 12 s left"
    assert status("unmeasured", "running") == "running"  # no measurement yet: no ETA
