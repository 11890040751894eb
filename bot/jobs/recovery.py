"""Start-up recovery: every job a crash left queued or running is run again or answered as failed.

A job accepted is a job answered, even across `kill -9`: the ledger row holds the full request and
how to reach the user (the interaction's webhook while its token lives, else the channel).

With shards in several processes (bot.sharding), a process recovers the jobs of the servers its
shards own (and, on shard 0, those from direct messages, as Discord sends those there): the jobs of a
process that died are its own to answer when it restarts, never a second process's as well. That split is
for processes sharing one bot id (PostgreSQL without Redis); a process holding its bot id on Redis answers every
job of its id, whatever its server's shard, as the jobs it took over from a dead process are its alone
(bot.jobs.takeover).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.storage.inputs import InputImageMissing
from bot.storage.job_store import record_of
from bot.storage.models import JobStatus
from inference.protocol import JobFailed

if TYPE_CHECKING:
    import discord

    from bot.jobs.service import JobService
    from bot.sharding import ShardRange
    from bot.storage.database import Database
    from bot.storage.models import JobRow

log = logging.getLogger(__name__)

# A job that this many runs of the bot started without finishing was running each time the bot
# went down (attempts count bot runs, not the queue's own retries after a worker crash).
MAX_ATTEMPTS = 2
# Older than this, a surprise image is no longer an answer anyone waits for.
MAX_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class Recovered:
    """What start-up recovery did, by job id."""

    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    delivered: tuple[str, ...] = ()  # their result was posted before the bot died: finished, not run again


def why_not_rerun(
    job: JobRow, *, now: datetime, max_attempts: int = MAX_ATTEMPTS, max_age: timedelta = MAX_AGE
) -> str | None:
    """The reason a leftover job is answered as failed instead of run again, or None to run it."""
    if job.attempts >= max_attempts:
        return (
            f"Stepgrid stopped {job.attempts} times while running this job, so it was not run again. "
            "Try fewer steps or a smaller size."
        )
    if now - job.created_at > max_age:
        return "Stepgrid restarted and this job had waited too long to run now; please run the command again."
    return None


async def recover_jobs(
    client: discord.Client,
    database: Database,
    jobs: JobService,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    max_age: timedelta = MAX_AGE,
    rows: Sequence[JobRow] | None = None,
    shards: ShardRange | None = None,
) -> Recovered:
    """Re-queue (oldest first) or fail every job left queued or running (this bot's, or `rows`: a dead bot's jobs
    taken over); their drivers answer them.

    With `shards`, only the jobs of the servers those shards own (None: this process runs every shard).

    A job that was running (or delivering) may have had its result posted just before the bot died,
    with the ledger write after the upload lost, and any job of a database restored from a backup
    (queued ones too) may have been answered after the backup: every job's message is read first,
    and a job whose result is there is recorded as done instead of being run a second time. When
    the message can't be read, the job runs again: better a second copy than no answer.
    """
    now = database.clock()
    requeued: list[str] = []
    failed: list[str] = []
    delivered: list[str] = []
    for job in rows if rows is not None else await database.ledger.unfinished_jobs():
        if rows is None and shards is not None and not shards.owns(job.guild_id):
            continue  # another shard's process recovers it (a dead bot's jobs taken over are all answered)
        token_age = (now - job.created_at).total_seconds()
        try:
            record = record_of(job, database.inputs)
        except InputImageMissing as missing:
            log.error("job %s can't run again: %s", job.id, missing, extra={"job_id": job.id})
            await database.ledger.mark_finished(
                job.id, JobFailed(job.id, "Its input image was lost in a restart; send the image again.")
            )
            failed.append(job.id)
            continue
        except (TypeError, ValueError):
            log.exception(
                "job %s has parameters this version can't read; answering it as failed",
                job.id,
                extra={"job_id": job.id},
            )
            await database.ledger.mark_finished(
                job.id, JobFailed(job.id, "Stepgrid was updated and could not read this job again.")
            )
            failed.append(job.id)
            continue
        # Queued jobs too: a database restored from a backup holds jobs as queued (or running) that were
        # answered after the backup was taken.
        if job.message_id is not None and await jobs.already_delivered(client, record, token_age=token_age):
            await database.ledger.mark_delivered(job.id)
            log.info("job %s was delivered before the restart; recorded as done", job.id, extra={"job_id": job.id})
            delivered.append(job.id)
            continue
        reason = why_not_rerun(job, now=now, max_attempts=max_attempts, max_age=max_age)
        if reason is not None:
            jobs.answer_failed(client, record, reason, token_age=token_age)
            failed.append(job.id)
            continue
        if job.status != JobStatus.QUEUED.value:
            await database.ledger.mark_queued(job.id)
        jobs.resume(client, record, token_age=token_age)
        requeued.append(job.id)
    if requeued or failed or delivered:
        log.warning(
            "recovered %d job(s) left by the last run: %d re-queued, %d answered as failed, %d already delivered",
            len(requeued) + len(failed) + len(delivered),
            len(requeued),
            len(failed),
            len(delivered),
        )
    return Recovered(requeued=tuple(requeued), failed=tuple(failed), delivered=tuple(delivered))
