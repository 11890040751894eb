"""The service's shared part (bot.jobs.core): outcomes the ledger refuses, defaults without known models."""

from __future__ import annotations

import pytest

from bot.storage.job_store import MemoryJobStore
from inference.protocol import JobFailed, JobResult
from tests.bot.fakes import IMAGINE, Harness, result_for
from tests.bot.jobs.service_helpers import start_command


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


async def test_without_known_models_the_request_names_no_model(harness: Harness) -> None:
    # A worker that has not reported its models (or an old one): the worker's default runs it.
    request = await start_command(harness)
    assert request.model == "" and (request.steps, request.scheduler) == (30, "Euler a")
