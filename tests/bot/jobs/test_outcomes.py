"""How jobs ended, into the ledger (bot.jobs.outcomes): an outcome it refuses is kept and tried again."""

from __future__ import annotations

import asyncio

import pytest

from bot.jobs.outcomes import LEDGER_RETRY_DELAYS, Outcomes
from bot.storage.job_store import MemoryJobStore
from inference.protocol import JobFailed, JobResult
from tests.bot.fakes import IMAGINE, WAIT, FakeClock, Harness, result_for


class FailingFinishStore(MemoryJobStore):
    """A store whose ledger write for a finished job fails (a full disk, a locked file)."""

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        raise OSError("disk full")


async def test_a_ledger_error_after_delivery_keeps_the_result(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness()
    harness.store = FailingFinishStore()
    harness.service = harness.make_service()
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    final = interaction.recorder.calls[-1]
    assert final.kind == "edit" and final.files[0][0] == "stepgrid-1234.png"
    assert interaction.recorder.of("delete", "followup") == []
    assert any("could not record its result" in record.getMessage() for record in caplog.records)


class FlakyStore(MemoryJobStore):
    """A ledger that refuses the first `failures` writes of a finished job (a disk full for a moment)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        await super().mark_finished(job_id, outcome)


async def test_an_outcome_the_ledger_refuses_is_tried_again_until_it_is_recorded() -> None:
    clock, store, told, in_ledger = FakeClock(), FlakyStore(failures=2), list[str](), asyncio.Event()

    def recorded(job_id: str) -> None:
        told.append(job_id)
        in_ledger.set()

    outcomes = Outcomes(store, recorded=recorded, sleep=clock.sleep)
    await outcomes.record("j1", JobFailed("j1", "stopped"))
    assert "j1" in outcomes and told == []  # kept: tried again in the background
    await asyncio.wait_for(in_ledger.wait(), WAIT)
    assert "j1" not in outcomes and store.status == {"j1": "failed"} and told == ["j1"]
    assert clock.sleeps == list(LEDGER_RETRY_DELAYS[:2])  # refused once more, recorded at the second try
    await outcomes.stop_retrying()
