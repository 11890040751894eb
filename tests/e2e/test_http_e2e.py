"""The operator's HTTP endpoint on a real bot: health, readiness, metrics and the status page, in a real browser too.

The bot runs against the fake Discord with the module's real worker (the tiny model) and a real SQLite ledger;
the endpoint listens on a free loopback port. Waits are on what the endpoint or the fake report, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bot.chat.client import Stepgrid
from bot.ops.http import EndpointUnavailable
from bot.storage.database import Database
from inference.logs import FORMAT_VARIABLE, LEVEL_VARIABLE, configure_logging
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from inference.worker import LOAD_GATE
from tests.e2e.helpers import e2e_settings, running_bot, wait_for_result, worker_paused
from tests.fake_discord import FakeDiscord
from tests.workers import started_queue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    """One real worker running the tiny model for the whole module."""
    async with started_queue(LocalJobQueue(tiny_config, max_length=50, hang_seconds=120)) as queue:
        yield queue


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def port_taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample, read with prometheus-client's own parser (0 when it isn't there yet)."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


async def test_health_readiness_metrics_and_status_page_of_a_running_bot(
    fake: FakeDiscord, database: Database, tiny_config: WorkerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    gate = tmp_path / "load-the-model"
    monkeypatch.setenv(LOAD_GATE, str(gate))  # this bot's own worker waits for the file before loading
    queue = LocalJobQueue(tiny_config)
    bot = Stepgrid(e2e_settings(http_port=port), queue=queue, database=database, guild_ready_timeout=0.05)
    async with bot:
        runner = asyncio.create_task(bot.start(fake.token))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), fake.timeout)
            status, body = await get(port, "/healthz")
            assert (status, body) == (200, '{"status": "ok", "database": "writable"}')  # alive while the model loads

            status, body = await get(port, "/readyz")
            assert status == 503 and "no model is ready yet (loading)" in body and "Discord" not in body, body
            assert sample((await get(port, "/metrics"))[1], "stepgrid_ready") == 0

            gate.touch()
            await queue.wait_ready()
            status, body = await get(port, "/readyz")
            assert (status, body) == (200, '{"ready": true, "reasons": [], "models": ["tiny"]}')

            _, before = await get(port, "/metrics")
            labels = {"command": "imagine", "model": "tiny", "scheduler": "Euler", "outcome": "done"}
            handle = await fake.invoke("imagine", {"prompt": "a secret lighthouse", "steps": 6, "size": "256",
                                                   "scheduler": "Euler", "count": 2})  # fmt: skip
            await wait_for_result(handle)
            await bot.jobs.close()  # the driver has counted the job once it ends
            _, after = await get(port, "/metrics")
            jobs = sample(after, "stepgrid_jobs_total", **labels) - sample(before, "stepgrid_jobs_total", **labels)
            assert jobs == 1, [line for line in after.splitlines() if line.startswith("stepgrid_jobs_total")]
            assert sample(after, "stepgrid_images_total") == sample(before, "stepgrid_images_total") + 2
            assert sample(after, "stepgrid_steps_total") == sample(before, "stepgrid_steps_total") + 12
            assert sample(after, "stepgrid_gpu_seconds_total") > sample(before, "stepgrid_gpu_seconds_total")
            waited = "stepgrid_queue_wait_seconds_count"
            assert sample(after, waited) == sample(before, waited) + 1
            assert sample(after, "stepgrid_models_ready") == 1 and sample(after, "stepgrid_ready") == 1
            assert "stepgrid_event_loop_lag_seconds_bucket" in after and "stepgrid_worker_restarts_total" in after
            assert sample(after, "stepgrid_queue_length") == 0 and sample(after, "stepgrid_jobs_running") == 0

            status, page = await get(port, "/")
            assert status == 200
            assert 'Stepgrid: <span class="ready">ready</span>' in page
            assert page.count('<svg class="chart"') == 3 and "Steps per hour" in page
            assert "local worker pid" in page and "tiny" in page
            assert "secret lighthouse" not in page  # finished, and prompts are hidden anyway
        finally:
            await bot.close()
            await runner


async def test_the_status_page_shows_waiting_jobs_and_their_prompts_only_when_asked(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database
) -> None:
    for show_prompts in (False, True):
        port = free_port()
        settings = e2e_settings(http_port=port, status_show_prompts=show_prompts)
        async with running_bot(fake, worker, settings=settings, database=database) as (_, queue):
            with worker_paused(worker):  # the job can't start, let alone finish, while the page is read
                handle = await fake.invoke("imagine", {"prompt": "a <b>private</b> fox", "steps": 4, "size": "256"})
                await queue.wait_for_submitted(1)  # accepted: recorded in the ledger, then queued
                _, page = await get(port, "/")
            assert "Queued and running (1)" in page and "imagine" in page
            assert ("a &lt;b&gt;private&lt;/b&gt; fox" in page) is show_prompts
            assert ("private" in page) is show_prompts
            await wait_for_result(handle)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
async def test_the_status_page_renders_its_charts_in_headless_chromium(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database, tmp_path: Path
) -> None:
    port = free_port()
    async with running_bot(fake, worker, settings=e2e_settings(http_port=port), database=database):
        handle = await fake.invoke("imagine", {"prompt": "a fox", "steps": 4, "size": "256"})
        await wait_for_result(handle)  # something on the charts
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--dump-dom", f"http://127.0.0.1:{port}/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        dom_bytes, log_bytes = await asyncio.wait_for(browser.communicate(), timeout=120)
    dom, log = dom_bytes.decode(), log_bytes.decode(errors="replace")
    assert browser.returncode == 0, log
    assert 'data-rendered="3"' in dom, dom[:2000]  # the page's script ran to its end and counted three charts
    assert dom.count("<rect ") == 3 * 24
    assert "Uncaught" not in log and "SyntaxError" not in log, log


async def test_json_logs_name_the_job_on_every_line_about_it(
    fake: FakeDiscord, worker: LocalJobQueue, database: Database, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(LEVEL_VARIABLE, "INFO")  # configure_logging exports these; the monkeypatch restores them
    monkeypatch.setenv(FORMAT_VARIABLE, "json")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("bot")
    try:
        async with running_bot(fake, worker, database=database) as (_, queue):
            handle = await fake.invoke("imagine", {"prompt": "a fox", "steps": 4, "size": "256"})
            await wait_for_result(handle)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    [job_id] = [submitted.job_id for submitted in queue.submitted]
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    about_the_job = [record for record in records if job_id in record["message"]]
    assert len(about_the_job) >= 2  # accepted, done
    assert all(record.get("job_id") == job_id for record in about_the_job), about_the_job


async def test_a_port_in_use_stops_the_bot_with_one_clear_line(fake: FakeDiscord, worker: LocalJobQueue) -> None:
    with port_taken() as port, pytest.raises(EndpointUnavailable) as refused:
        async with running_bot(fake, worker, settings=e2e_settings(http_port=port)):
            pass
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message and "STEPGRID_HTTP_PORT" in message and "\n" not in message
