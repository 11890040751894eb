"""What most end-to-end modules share: the fake Discord, a ledger, a tiny worker batching up to eight
lanes. A module that needs another of them defines its own fixture of the same name."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.storage.database import Database
from inference.protocol import WorkerConfig
from inference.queues.local import LocalJobQueue
from tests.e2e.helpers import e2e_settings
from tests.fake_discord import FakeDiscord, running_fake
from tests.workers import started_queue


@pytest_asyncio.fixture(loop_scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with running_fake(timeout=60.0) as fake:  # a hang guard on a busy CPU, not a timing expectation
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "stepgrid.sqlite3", e2e_settings()) as database:
        yield database


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tiny_config: WorkerConfig) -> AsyncIterator[LocalJobQueue]:
    async with started_queue(
        LocalJobQueue(dataclasses.replace(tiny_config, max_batch_lanes=8), max_length=50, hang_seconds=120)
    ) as queue:
        yield queue
