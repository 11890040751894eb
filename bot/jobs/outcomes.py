"""How each job ended, into the ledger; an outcome the ledger refuses (a disk full for a moment) is kept and
tried again until it is recorded.

The member must not stay "running" in the ledger (it counts against their concurrent jobs), and a job whose
answer was sent must not look unfinished to the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.replies.throttle import Sleep
from bot.storage.job_store import JobStore
from inference.protocol import JobFailed, JobResult

log = logging.getLogger(__name__)

# A job's final ledger write that fails (a disk full for a moment) is tried again, waiting this long
# between tries; after the last, it is tried again before each admission and at shutdown.
LEDGER_RETRY_DELAYS = (0.5, 2.0, 5.0, 15.0, 30.0, 60.0)


class Outcomes:
    """Records how jobs ended in `store`; `recorded(job_id)` is called once a job's outcome is in it."""

    def __init__(self, store: JobStore, *, recorded: Callable[[str], None], sleep: Sleep) -> None:
        self.store = store
        self._recorded = recorded
        self._sleep = sleep
        # Final outcomes the ledger could not record yet, by job id: retried until it can.
        self._unrecorded: dict[str, JobResult | JobFailed] = {}
        self._ledger_retry: asyncio.Task[None] | None = None

    def __contains__(self, job_id: object) -> bool:
        """Whether the job's outcome waits for the ledger to record it."""
        return job_id in self._unrecorded

    async def record_pending(self) -> None:
        """Try again to record the outcomes the ledger refused (a disk that was full for a moment)."""
        for job_id, outcome in list(self._unrecorded.items()):
            try:
                await self.store.mark_finished(job_id, outcome)
            except Exception:
                log.warning(
                    "the ledger still can't record how job %s ended", job_id, exc_info=True, extra={"job_id": job_id}
                )
                return
            self._unrecorded.pop(job_id, None)
            self._recorded(job_id)
            log.info("job %s: its outcome is recorded in the ledger now", job_id, extra={"job_id": job_id})

    async def record(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        """Record how a job ended; if the ledger refuses, keep it and try again in the background."""
        try:
            await self.store.mark_finished(job_id, outcome)
            self._recorded(job_id)
            return
        except Exception:
            if isinstance(outcome, JobResult):
                log.exception("job %s was delivered but the ledger could not record its result; trying again", job_id)
            else:
                log.exception("job %s ended but the ledger could not record how; trying again", job_id)
        self._unrecorded[job_id] = outcome
        if self._ledger_retry is None or self._ledger_retry.done():
            self._ledger_retry = asyncio.create_task(self._retry_ledger(), name="stepgrid-ledger-retry")

    async def stop_retrying(self) -> None:
        """Stop the background retries (at shutdown; `record_pending` may still be called)."""
        if self._ledger_retry is not None:
            self._ledger_retry.cancel()
            await asyncio.gather(self._ledger_retry, return_exceptions=True)

    async def _retry_ledger(self) -> None:
        for delay in LEDGER_RETRY_DELAYS:
            await self._sleep(delay)
            await self.record_pending()
            if not self._unrecorded:
                return
        log.error("the ledger could not record %d job outcome(s); trying again at the next job", len(self._unrecorded))
