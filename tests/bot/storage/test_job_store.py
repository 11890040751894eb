"""Where accepted jobs are recorded: a record read back is the job as accepted, in memory or in the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.storage.database import Database
from bot.storage.job_store import DatabaseJobStore, JobRecord, JobStore, MemoryJobStore, record_of
from inference.protocol import JobFailed, JobResult
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest, Request

# Every field away from its default, so that a field the store drops or mangles shows.
IMAGINE = GenerateRequest(
    "a fox",
    steps=17,
    scheduler="DPM++ 2M Karras",
    seed=4_000_000_000,
    guidance=4.5,
    width=768,
    height=512,
    negative_prompt="blurry, text",
    count=3,
)
COMPARE = CompareStepsRequest(
    "a boat", steps=(3, 9, 27), scheduler="Heun", seed=9, guidance=11.0, width=640, height=384, negative_prompt="fog"
)
SCHEDULERS = CompareSchedulersRequest(
    "a cat",
    schedulers=("Euler a", "DPM++ 2M Karras"),
    steps=(4, 8),
    seed=9,
    guidance=3.0,
    width=512,
    height=256,
    negative_prompt="rain",
    model="sd15",
)


def accepted(request: Request, job_id: str = "a" * 32) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        request=request,
        user_id=11,
        guild_id=1000,
        channel_id=500,
        origin="more",
        created_at=datetime(2026, 3, 14, 12, 0, tzinfo=UTC),
        parent_job_id="b" * 32,
        application_id=42,
        interaction_token="token-abc",
        message_id=777,
    )


@pytest.mark.parametrize(
    "request_", [IMAGINE, COMPARE, SCHEDULERS], ids=["imagine", "compare-steps", "compare-schedulers"]
)
async def test_job_records_keep_the_full_request(db: Database, request_: Request) -> None:
    record = accepted(request_)
    await DatabaseJobStore(db).record(record)
    read_back = await DatabaseJobStore(db).get(record.job_id)  # a new store: as after a restart
    assert read_back is not None
    assert read_back == record
    assert type(read_back.request) is type(request_)


async def test_the_memory_store_keeps_the_record_and_its_status() -> None:
    store: JobStore = MemoryJobStore()
    record = accepted(IMAGINE)
    await store.record(record)
    assert await store.get(record.job_id) == record
    assert await store.get("unknown") is None


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (JobResult("a" * 32, images=(), gpu_seconds=1.0), "done"),
        (JobFailed("a" * 32, "The worker stopped."), "failed"),
        (JobFailed.cancellation("a" * 32, steps_run=3), "cancelled"),
    ],
)
async def test_both_stores_record_how_a_job_ended(db: Database, outcome: JobResult | JobFailed, status: str) -> None:
    memory, ledger = MemoryJobStore(), DatabaseJobStore(db)
    for store in (memory, ledger):
        await store.record(accepted(IMAGINE))
        await store.mark_running("a" * 32)
        await store.mark_finished("a" * 32, outcome)
    row = await db.ledger.get_job("a" * 32)
    assert row is not None and row.status == memory.status["a" * 32] == status


async def test_a_row_without_an_origin_reads_as_its_command(db: Database) -> None:
    job = await db.ledger.record_job(COMPARE, user_id=11, channel_id=500, guild_id=None)
    assert job.origin == "compare-steps"
    job.origin = None
    assert record_of(job).origin == "compare-steps"
