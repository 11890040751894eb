"""The JobQueue contract, and the base every backend shares: submission, fair order, positions, events.

A backend (the local worker pipe, Redis) decides only how a job at the head of the fair order gets
to a GPU (`_dispatch`) and how a running job is cancelled there (`_cancel_running`); everything a
member sees before that (their place, their turn, the queue being full) is the same code.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from inference.model_info import ModelInfo, ModelUnavailable
from inference.protocol import (
    TERMINAL_EVENTS,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    JobStarted,
    StepRate,
    WorkerConfig,
)
from inference.queues.eta import Eta, RateBook, Work, calls_left, forecast, rounded_seconds
from inference.requests import InvalidRequest, Request, hires_steps_run, lane_steps_run

FORECAST_INTERVAL_S = 0.5  # a forecast replays the queue: at most this often, however many events arrive
WAITING_REFRESH_S = 1.0  # waiting jobs hear of a new start estimate (a repeated JobQueued) at most this often


class QueueFull(Exception):
    """The queue is at its maximum length; nothing was queued."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"The queue is full ({waiting} of {limit} jobs waiting); try again in a minute.")
        self.waiting = waiting
        self.limit = limit


class WorkerUnavailable(RuntimeError):
    """The worker cannot load its model; restarting won't help. The message says what to fix."""


class ModelsUnavailable(WorkerUnavailable):
    """The worker ran but loaded none of its models (the message says why each failed): what was
    asked for is at fault, not the machine."""


@dataclass(frozen=True)
class WorkerStatus:
    """One GPU worker as the operator's status page shows it."""

    name: str
    state: str  # "loading", "ready", "failed", "restarting" or (an agent serving no model the bot knows) "unusable"
    device: str  # "" until known
    models: tuple[str, ...]
    detail: str = ""
    restarts: int = 0


class JobQueue(abc.ABC):
    """Submit requests, follow their events, cancel them."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the worker(s); returns at once, `wait_ready` waits for the model."""

    @abc.abstractmethod
    async def wait_ready(self) -> None:
        """Wait until a worker has loaded and warmed up its pipeline (raises if it can't)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the workers; jobs still pending are answered as failed."""

    async def drain(self, grace: float) -> None:
        """Before `close`: start no more jobs, and wait (at most `grace` seconds) for the running ones to end."""
        return None  # a queue that holds no jobs of its own (a test's view of another) has none to wait for

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True once a worker has reported ready."""

    @property
    def unavailable(self) -> str | None:
        """Why no job can run at all (the model failed to load), or None."""
        return None

    @property
    def connection_problem(self) -> str | None:
        """Why jobs can't reach the GPU workers right now, for a while (Redis down: they wait), or None."""
        return None

    @property
    def models(self) -> dict[str, ModelInfo]:
        """The loaded models by registry name, the default first (empty until ready)."""
        return {}

    @property
    def unavailable_models(self) -> dict[str, ModelUnavailable]:
        """Configured models that failed to load, with why."""
        return {}

    def workers(self) -> list[WorkerStatus]:
        """The GPU workers behind this queue and their state."""
        return []

    @abc.abstractmethod
    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        """Queue a request (validated by the caller); returns its job id. Raises QueueFull."""

    @abc.abstractmethod
    def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """Events of one job, ending with its JobResult or JobFailed."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it is unknown or already finished."""

    @abc.abstractmethod
    def position(self, job_id: str) -> int | None:
        """1-based place among waiting jobs, or None when running or unknown."""

    def estimate(self, job_id: str) -> Eta | None:
        """When a waiting job starts and when a job's answer is due, from measured rates; None before
        there is a measurement for it (or for a job ahead of it)."""
        return None

    def recorded(self, job_id: str) -> None:
        """The bot recorded how the job ended: what was kept to answer it after a restart may go."""
        return None  # the local queue keeps nothing outside the bot's process


@dataclass(eq=False)
class QueuedJob:
    """One accepted job while this queue holds it: waiting, then running until its answer."""

    job_id: str
    user_id: str
    request: Request
    seq: int
    submitted_at: float
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    attempts: int = 0
    isolate: bool = False  # after a crash, run alone so a job that kills the worker harms no other
    started_at: float | None = None
    position: int | None = None
    finished: bool = False
    cancel_requested: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set with its last event
    lane_done: dict[int, int] = field(default_factory=dict)  # steps per lane, as its progress events say
    rate: StepRate | None = None  # its latest iteration's measured rate (the device and batch it runs in)
    shown_start: int | None = None  # the rounded start estimate its last JobQueued went out with

    @property
    def lane_count(self) -> int:
        return len(self.request.lane_steps)


class FairJobQueue(JobQueue):
    """Pending jobs in this process, served round robin across members; a backend runs them."""

    def __init__(self, config: WorkerConfig, *, max_length: int = 100) -> None:
        self.config = config
        self.max_length = max_length
        self._jobs: dict[str, QueuedJob] = {}
        self._pending: list[QueuedJob] = []
        self._running: dict[str, QueuedJob] = {}
        self._turns: list[str] = []  # users with waiting jobs, in the order they are served next
        self._seq = itertools.count()
        self._ready = asyncio.Event()
        self._closing = False
        self._draining = False  # a planned stop: no job starts any more
        self.rates = RateBook()  # in memory: learned again after a restart
        self._forecast: dict[str, tuple[float | None, float]] | None = None  # monotonic (start, finish)
        self._forecast_at = 0.0
        self._forecast_stale = True
        self._waiting_refreshed_at = 0.0

    @abc.abstractmethod
    def _dispatch(self) -> None:
        """Start what the backend has room for, from the head of the fair order (`_start` each)."""

    @abc.abstractmethod
    def _cancel_running(self, job: QueuedJob) -> None:
        """Ask the backend to stop a running job; its answer (or its end as cancelled) follows."""

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _check_model(self, request: Request) -> None:
        """Refuse a request its model can't run, before it is queued; before the models are known,
        only a name the operator did not configure."""
        if request.model and request.model not in self.config.model_names:
            names = ", ".join(self.config.model_names)
            raise InvalidRequest(f"Unknown model {request.model!r}; choose one of: {names}.")

    async def drain(self, grace: float) -> None:
        self._draining = True
        running = [asyncio.ensure_future(job.settled.wait()) for job in self._running.values()]
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=grace)
        for waiter in late:
            waiter.cancel()

    # -- the public queue API ---------------------------------------------------------------

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        self._check_model(request)
        if len(self._pending) >= self.max_length:
            raise QueueFull(len(self._pending), self.max_length)
        job = QueuedJob(job_id or uuid.uuid4().hex, user_id, request, next(self._seq), time.monotonic())
        if job.job_id in self._jobs:
            raise ValueError(f"job id {job.job_id} is already in use")
        self._jobs[job.job_id] = job
        self._pending.append(job)
        self._update_positions()
        self._dispatch()
        return job.job_id

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        job = self._jobs[job_id]
        while True:
            event = await job.events.get()
            if isinstance(event, TERMINAL_EVENTS):
                # Forget the job before handing over its last event: a consumer that stops iterating
                # there (most do) never resumes this generator, and the job would stay here forever.
                self._jobs.pop(job_id, None)
                yield event
                return
            yield event

    def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        if job in self._pending:
            self._pending.remove(job)
            self._finish(job, JobFailed.cancellation(job_id))
            self._update_positions()
        elif job_id in self._running:
            job.cancel_requested = True
            self._cancel_running(job)
        return True

    def position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        return job.position if job else None

    # -- estimates ------------------------------------------------------------------------------

    def estimate(self, job_id: str) -> Eta | None:
        job = self._jobs.get(job_id)
        if job is None or job.finished or not self.ready:
            return None
        entry = self._forecast_now().get(job_id)
        if entry is None:
            return None
        start, finish = entry
        now = time.monotonic()
        return Eta(max(0.0, finish - now), None if start is None else max(0.0, start - now))

    def _on_started(self, job: QueuedJob, attempt: int) -> None:
        """A worker began `job` (its `attempt`, counted from 1): its clock starts with the first one."""
        job.attempts = attempt
        job.started_at = job.started_at or time.monotonic()
        job.events.put_nowait(JobStarted(job.job_id, attempt))

    def _on_progress(self, job: QueuedJob, event: JobProgress) -> None:
        """Hand a running job its progress, and learn from it: its steps, and the worker's measured rate."""
        for lane, step in event.lane_steps or ((event.lane, event.step),):
            job.lane_done[lane] = step
        if event.rate is not None:
            if self.rates.record(event.rate):
                self._forecast = None  # what could not be priced may be now: no waiting for the next interval
            job.rate = event.rate
        self._forecast_stale = True
        job.events.put_nowait(event)
        self._refresh_waiting()

    def _eta_model(self, request: Request) -> str:
        """The model a request runs on (its own, else the default)."""
        return request.model or next(iter(self.models), "")

    def _eta_engines(self) -> tuple[int, int]:
        """(lanes that run at once, engines sharing them): the local worker's batch cap, one engine."""
        return self.config.max_batch_lanes, 1

    def _work(self, job: QueuedJob) -> Work | None:
        """The job's work left as the forecast sees it; None for what it can't price (a hires pass: its
        second size's rate is not known until it runs)."""
        request = job.request
        family = info.family if (info := self.models.get(self._eta_model(request))) else ""
        if hires_steps_run(request, family):
            return None
        calls = calls_left(lane_steps_run(request, family), request.lane_schedulers, job.lane_done)
        started = [job.lane_done.get(lane, 0) > 0 for lane in range(len(calls))]
        device = job.rate.device if job.rate else None
        model = self._eta_model(request)
        return Work(job.job_id, model, request.width, request.height, calls, started, device, job.isolate)

    def _forecast_now(self) -> dict[str, tuple[float | None, float]]:
        now = time.monotonic()
        if self._forecast is not None and not (self._forecast_stale and now - self._forecast_at >= FORECAST_INTERVAL_S):
            return self._forecast
        running = [work for job in self._running.values() if (work := self._work(job)) is not None]
        waiting: list[Work] = []
        for job in self._pending:
            work = self._work(job)
            if work is None:
                break  # what waits behind it can't be priced either
            waiting.append(work)
        cap, engines = self._eta_engines()
        times = forecast(running, waiting, self.rates, lanes_cap=cap, engines=engines)
        self._forecast = {
            job_id: (None if start is None else now + start, now + finish) for job_id, (start, finish) in times.items()
        }
        self._forecast_at, self._forecast_stale = now, False
        return self._forecast

    def _start_estimate(self, job: QueuedJob) -> int | None:
        eta = self.estimate(job.job_id)
        return None if eta is None or eta.starts_in is None else rounded_seconds(eta.starts_in)

    def _refresh_waiting(self) -> None:
        """Tell waiting jobs (a repeated JobQueued) when their start estimate, as people read it, changed."""
        now = time.monotonic()
        if not self._pending or now - self._waiting_refreshed_at < WAITING_REFRESH_S:
            return
        self._waiting_refreshed_at = now
        for job in self._pending:
            shown = self._start_estimate(job)
            if shown != job.shown_start and job.position is not None:
                job.shown_start = shown
                job.events.put_nowait(JobQueued(job.job_id, job.position))

    # -- ordering -----------------------------------------------------------------------------

    def _fair_order(self) -> list[QueuedJob]:
        """Retried jobs first, then round-robin over users in `_turns` order, one job per user a round."""
        retries = sorted((job for job in self._pending if job.isolate), key=lambda j: j.seq)
        per_user: dict[str, list[QueuedJob]] = {}
        for job in sorted(self._pending, key=lambda j: j.seq):
            if not job.isolate:
                per_user.setdefault(job.user_id, []).append(job)
        self._turns = [user for user in self._turns if user in per_user]
        self._turns += [user for user in per_user if user not in self._turns]
        rounds = itertools.zip_longest(*(per_user[user] for user in self._turns))
        return retries + [job for round_ in rounds for job in round_ if job is not None]

    def _update_positions(self) -> None:
        self._pending = self._fair_order()
        for place, job in enumerate(self._pending, start=1):
            self._tell_place(job, place)
        self._forecast_stale = True

    def _tell_place(self, job: QueuedJob, place: int) -> None:
        """Tell a waiting job its place in line (1 = next), when it moved."""
        if job.position != place:
            job.position = place
            job.shown_start = None
            job.events.put_nowait(JobQueued(job.job_id, place))

    def _start(self, job: QueuedJob) -> None:
        """Take `job` off the waiting list into the running set; its member goes to the back of the line."""
        self._pending.remove(job)
        job.lane_done.clear()  # a retry starts its lanes again
        self._forecast_stale = True
        if job.user_id in self._turns and not job.isolate:
            self._turns.remove(job.user_id)
            self._turns.append(job.user_id)
        job.position = None
        self._running[job.job_id] = job

    def _finish(self, job: QueuedJob, event: JobResult | JobFailed) -> None:
        job.finished = True
        self._forecast_stale = True
        self._running.pop(job.job_id, None)
        queue_seconds = (job.started_at or time.monotonic()) - job.submitted_at
        job.events.put_nowait(dataclasses.replace(event, queue_seconds=queue_seconds))
        job.settled.set()

    def _answer_unfinished(self) -> None:
        """At close: every job still held is answered (as retryable: the next start may run it)."""
        for job in [*self._running.values(), *self._pending]:
            fate = "was stopped before it finished" if job.job_id in self._running else "did not run"
            self._finish(job, JobFailed(job.job_id, f"Stepgrid is shutting down; this job {fate}.", retryable=True))
        self._pending.clear()

    def _fail_everything(self, message: str) -> None:
        for job in [*self._running.values(), *self._pending]:
            self._finish(job, JobFailed(job.job_id, message))
        self._pending.clear()
