"""Where accepted jobs are recorded: the JobRecord, the JobStore protocol and its two stores."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from bot.job_requests import RequestOptions
from bot.storage.inputs import InputImageMissing, InputImages
from bot.storage.models import INPUT_NOTES, STEPS_NOTE, UNBUILT_OPTIONS
from bot.storage.sweet_spots import SettledRow
from inference.protocol import JobFailed, JobResult
from inference.requests import Request

if TYPE_CHECKING:
    from bot.storage.database import Database
    from bot.storage.models import JobRow


@dataclass(frozen=True)
class JobRecord:
    """A job as accepted: who asked where, and the full request (what buttons resolve).

    A job accepted while no model was known carries `options`, what the member typed: its `request`
    (generic defaults where options were left out) is provisional until the job is built with its
    model's defaults.
    """

    job_id: str
    request: Request
    user_id: int
    guild_id: int | None
    channel_id: int | None
    origin: str  # what started it: "imagine", "compare-steps", or the button action on `parent_job_id`
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parent_job_id: str | None = None
    # How to answer after a restart: the interaction's webhook and the message its defer created.
    application_id: int | None = None
    interaction_token: str | None = None
    message_id: int | None = None
    options: RequestOptions | None = None
    notes: tuple[str, ...] = ()  # what was changed in its input image (shown with the result; kept in its params)
    steps_note: str = ""  # where an /imagine's learned steps came from (said with the result; kept in its params)


def options_to_params(options: RequestOptions) -> dict[str, Any]:
    """The options as JSON-safe values; an input image is kept on disk with the job (bot.storage.inputs)."""
    return {name: value for name, value in dataclasses.asdict(options).items() if name != "image"}


def options_of(params: dict[str, Any]) -> RequestOptions | None:
    """The unbuilt options stored beside a provisional request, or None (a built request)."""
    stored = params.get(UNBUILT_OPTIONS)
    if stored is None:
        return None
    known = {f.name for f in dataclasses.fields(RequestOptions)}
    return RequestOptions(**{name: value for name, value in stored.items() if name in known})


def record_of(job: JobRow, inputs: InputImages | None = None) -> JobRecord:
    """The JobRecord of a ledger row, with what is needed to answer it (and its input image from
    `inputs`; InputImageMissing, a ValueError, when it is gone)."""
    sha256 = job.input_sha256
    image = b""
    if sha256 is not None:
        if inputs is None:
            raise InputImageMissing(f"job {job.id} has an input image and no store was given to read it")
        image = inputs.load(job.id, sha256)
    return JobRecord(
        job_id=job.id,
        request=job.to_request(image),
        user_id=job.user_id,
        guild_id=job.guild_id,
        channel_id=job.channel_id,
        origin=job.origin or job.command,
        created_at=job.created_at,
        parent_job_id=job.parent_job_id,
        application_id=job.application_id,
        interaction_token=job.interaction_token,
        message_id=job.message_id,
        options=options_of(job.params),
        notes=tuple(str(note) for note in job.params.get(INPUT_NOTES) or ()),
        steps_note=str(job.params.get(STEPS_NOTE) or ""),
    )


class JobStore(Protocol):
    """Where jobs are recorded: in memory, or in the database ledger."""

    async def record(self, job: JobRecord) -> None:
        """Store a newly accepted job (status queued)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The stored job, or None if unknown."""

    async def set_request(self, job_id: str, request: Request, *, steps_note: str = "") -> None:
        """The job is built for its model: `request` replaces the provisional one, and its options are dropped;
        `steps_note` says where its steps came from."""

    async def mark_running(self, job_id: str) -> None:
        """The worker started the job (called once per bot run, not for the queue's retries)."""

    async def mark_delivering(self, job_id: str, result: JobResult, *, withheld: int = 0) -> None:
        """The result is about to be uploaded (its figures are recorded first, and how many flagged
        pictures are withheld from it)."""

    async def mark_interrupted(self, job_id: str) -> None:
        """A planned stop left the job unfinished: queued again for the next start (a run it was in uncounted)."""

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        """The job ended with a result, a failure or a cancellation."""

    async def keep_cells(self, job_id: str, cells: Mapping[int, bytes]) -> None:
        """Keep a grid's cell images (by lane index) for its cells' Vary and Upscale."""

    async def cell_image(self, job_id: str, index: int) -> bytes | None:
        """A grid's kept cell image, or None if it is not kept."""

    async def remember_settle_points(self, job: JobRecord, *, model: str, rows: Sequence[SettledRow]) -> None:
        """Where the rows of the job's finished grid settled: its server's memory of its sweet spots."""


class MemoryJobStore:
    """A JobStore in a dict: buttons work until the process exits."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.status: dict[str, str] = {}
        self.cells: dict[tuple[str, int], bytes] = {}
        self.settle_points: dict[str, tuple[SettledRow, ...]] = {}

    async def record(self, job: JobRecord) -> None:
        self.jobs[job.job_id] = job
        self.status[job.job_id] = "queued"

    async def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def set_request(self, job_id: str, request: Request, *, steps_note: str = "") -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], request=request, options=None, steps_note=steps_note)

    async def mark_running(self, job_id: str) -> None:
        self.status[job_id] = "running"

    async def mark_delivering(self, job_id: str, result: JobResult, *, withheld: int = 0) -> None:
        self.status[job_id] = "delivering"

    async def mark_interrupted(self, job_id: str) -> None:
        self.status[job_id] = "queued"

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        if isinstance(outcome, JobResult):
            self.status[job_id] = "done"
        else:
            self.status[job_id] = "cancelled" if outcome.cancelled else "failed"

    async def keep_cells(self, job_id: str, cells: Mapping[int, bytes]) -> None:
        self.cells.update(((job_id, index), png) for index, png in cells.items())

    async def cell_image(self, job_id: str, index: int) -> bytes | None:
        return self.cells.get((job_id, index))

    async def remember_settle_points(self, job: JobRecord, *, model: str, rows: Sequence[SettledRow]) -> None:
        self.settle_points[job.job_id] = tuple(rows)


class DatabaseJobStore:
    """A JobStore on the job ledger: buttons resolve after a restart, every job has its row."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(self, job: JobRecord) -> None:
        await self.database.ledger.record_job(
            job.request,
            user_id=job.user_id,
            channel_id=job.channel_id or 0,
            guild_id=job.guild_id,
            job_id=job.job_id,
            origin=job.origin,
            parent_job_id=job.parent_job_id,
            application_id=job.application_id,
            interaction_token=job.interaction_token,
            message_id=job.message_id,
            unbuilt_options=None if job.options is None else options_to_params(job.options),
            notes=job.notes,
            steps_note=job.steps_note,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self.database.ledger.get_job(job_id)
        if row is None:
            return None
        return record_of(row, self.database.inputs)

    async def set_request(self, job_id: str, request: Request, *, steps_note: str = "") -> None:
        await self.database.ledger.set_request(job_id, request, steps_note=steps_note)

    async def mark_running(self, job_id: str) -> None:
        await self.database.ledger.mark_running(job_id)

    async def mark_delivering(self, job_id: str, result: JobResult, *, withheld: int = 0) -> None:
        await self.database.ledger.mark_delivering(job_id, result, withheld=withheld)

    async def mark_interrupted(self, job_id: str) -> None:
        await self.database.ledger.mark_interrupted(job_id)

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        await self.database.ledger.mark_finished(job_id, outcome)

    async def keep_cells(self, job_id: str, cells: Mapping[int, bytes]) -> None:
        await asyncio.to_thread(self.database.cells.save, job_id, cells)

    async def cell_image(self, job_id: str, index: int) -> bytes | None:
        return await asyncio.to_thread(self.database.cells.load, job_id, index)

    async def remember_settle_points(self, job: JobRecord, *, model: str, rows: Sequence[SettledRow]) -> None:
        request = job.request
        await self.database.sweet_spots.record(
            job.job_id, guild_id=job.guild_id, model=model, width=request.width, height=request.height, rows=rows
        )
