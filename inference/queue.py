"""The asyncio-facing job queue: pending jobs live here, GPU work happens in a spawned worker."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing as mp
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from inference.protocol import (
    TERMINAL_EVENTS,
    CancelJob,
    InvalidRequest,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    JobStarted,
    ModelInfo,
    ModelUnavailable,
    ProgressBatch,
    Request,
    Shutdown,
    SubmitJob,
    WorkerConfig,
    WorkerFailed,
    WorkerReady,
    validate_for_model,
)
from inference.worker import worker_main

log = logging.getLogger(__name__)

MAX_STARTUP_CRASHES = 3


class QueueFull(Exception):
    """The queue is at its maximum length; nothing was queued."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"The queue is full ({waiting} of {limit} jobs waiting); try again in a minute.")
        self.waiting = waiting
        self.limit = limit


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while a worker starts: the ignored disposition survives its exec, and Python then
    installs no KeyboardInterrupt handler in it. Ctrl-C in a terminal signals the whole process group;
    the bot (or CLI) stops its worker itself, instead of the worker dying mid-job with a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


@dataclass(eq=False)
class _QueuedJob:
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

    @property
    def lane_count(self) -> int:
        return len(self.request.lane_steps)


def describe_exit(exitcode: int | None) -> str:
    """How a worker process ended, with the likely cause, for the operator's log line."""
    if exitcode is None:
        return "stopped answering"
    if exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    causes = {
        "SIGKILL": " (the kernel's out-of-memory killer, the hang watchdog or kill -9; see dmesg)",
        "SIGSEGV": " (a crash in native code: the GPU driver, torch or a library)",
    }
    return f"was killed by {name}{causes.get(name, '')}"


class WorkerUnavailable(RuntimeError):
    """The worker cannot load its model; restarting won't help. The message says what to fix."""


class ModelsUnavailable(WorkerUnavailable):
    """The worker ran but loaded none of its models (the message says why each failed): what was
    asked for is at fault, not the machine."""


class LocalJobQueue(JobQueue):
    """Pending jobs in this process (fair across users); GPU work in one spawned worker process.

    A supervisor restarts a crashed or hung worker with backoff and re-runs its jobs, each alone,
    at most `max_attempts` times in all. The event loop never blocks: a reader thread turns pipe
    messages into loop callbacks.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        max_length: int = 100,
        hang_seconds: float = 120.0,
        max_attempts: int = 2,
        worker_target: Callable[[Connection, WorkerConfig], None] = worker_main,
    ) -> None:
        self.config = config
        self.max_length = max_length
        self.hang_seconds = hang_seconds
        self.max_attempts = max_attempts
        self._target = worker_target
        self._jobs: dict[str, _QueuedJob] = {}
        self._pending: list[_QueuedJob] = []
        self._running: dict[str, _QueuedJob] = {}
        self._turns: list[str] = []  # users with waiting jobs, in the order they are served next
        self._seq = itertools.count()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._generation = 0
        self._ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._fatal: str | None = None
        self._no_model_loaded = False  # the worker said so (WorkerFailed), rather than crashing
        self._last_event_at = 0.0
        self._crashes = 0
        self._startup_crashes = 0  # exits before WorkerReady in a row
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self.worker_info: WorkerReady | None = None
        self.restarts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="stepgrid-worker-supervisor")

    async def wait_ready(self) -> None:
        ready = asyncio.ensure_future(self._ready.wait())
        supervisor = self._supervisor
        assert supervisor is not None, "start() first"
        await asyncio.wait({ready, supervisor}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._fatal:
            raise (ModelsUnavailable if self._no_model_loaded else WorkerUnavailable)(self._fatal)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def unavailable(self) -> str | None:
        return self._fatal

    @property
    def models(self) -> dict[str, ModelInfo]:
        info = self.worker_info
        return {model.name: model for model in info.models} if info else {}

    @property
    def unavailable_models(self) -> dict[str, ModelUnavailable]:
        info = self.worker_info
        return {item.name: item for item in info.unavailable} if info else {}

    def model_info(self, name: str) -> ModelInfo:
        """The loaded model a request names ("" = the default); InvalidRequest if it can't run."""
        models = self.models
        if not name:
            return next(iter(models.values()))
        if name in models:
            return models[name]
        unavailable = self.unavailable_models.get(name)
        if unavailable is not None:
            raise InvalidRequest(f"The model {name!r} is unavailable: {unavailable.message}")
        raise InvalidRequest(f"Unknown model {name!r}; choose one of: {', '.join(models)}.")

    def _check_model(self, request: Request) -> None:
        """Refuse a request its model can't run, before it is queued (once models are known)."""
        if self.worker_info is None:
            if request.model and request.model not in self.config.model_names:
                names = ", ".join(self.config.model_names)
                raise InvalidRequest(f"Unknown model {request.model!r}; choose one of: {names}.")
            return
        validate_for_model(request, self.model_info(request.model))

    @property
    def worker_pid(self) -> int | None:
        return self._process.pid if self._process else None

    def workers(self) -> list[WorkerStatus]:
        info = self.worker_info
        if self._fatal:
            state = "failed"
        elif self._process is None or not self._process.is_alive():
            state = "restarting" if self.restarts else "loading"
        else:
            state = "ready" if self.ready else "loading"
        return [
            WorkerStatus(
                name=f"local worker pid {self.worker_pid}" if self.worker_pid else "local worker",
                state=state,
                device=f"{info.device} ({info.dtype})" if info else "",
                models=tuple(self.models) or self.config.model_names,
                detail=self._fatal or (f"loaded in {info.load_seconds:.1f}s" if info else ""),
                restarts=self.restarts,
            )
        ]

    async def close(self) -> None:
        self._closing = True
        if self._process is not None and self._process.is_alive() and self._send(Shutdown()):
            await asyncio.to_thread(self._process.join, 10)
        await self._stop_worker()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for job in [*self._running.values(), *self._pending]:
            fate = "was stopped before it finished" if job.job_id in self._running else "did not run"
            self._finish(job, JobFailed(job.job_id, f"Stepgrid is shutting down; this job {fate}.", retryable=True))

    # -- the public queue API ---------------------------------------------------------------

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        if self._fatal:
            raise WorkerUnavailable(self._fatal)
        self._check_model(request)
        if len(self._pending) >= self.max_length:
            raise QueueFull(len(self._pending), self.max_length)
        job = _QueuedJob(job_id or uuid.uuid4().hex, user_id, request, next(self._seq), time.monotonic())
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
            # The worker answers; if it dies first, the job ends as cancelled instead of re-running.
            job.cancel_requested = True
            self._send(CancelJob(job_id))
        return True

    def position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        return job.position if job else None

    # -- ordering and dispatch ----------------------------------------------------------------

    def _fair_order(self) -> list[_QueuedJob]:
        """Retried jobs first, then round-robin over users in `_turns` order, one job per user a round."""
        retries = sorted((job for job in self._pending if job.isolate), key=lambda j: j.seq)
        per_user: dict[str, list[_QueuedJob]] = {}
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
            if job.position != place:
                job.position = place
                job.events.put_nowait(JobQueued(job.job_id, place))

    def _dispatch(self) -> None:
        if not self._ready.is_set() or self._conn is None:
            return
        while self._pending:
            if any(job.isolate for job in self._running.values()):
                break
            job = self._pending[0]
            busy_lanes = sum(j.lane_count for j in self._running.values())
            if self._running and (job.isolate or busy_lanes + job.lane_count > self.config.max_batch_lanes):
                break
            self._pending.pop(0)
            if job.user_id in self._turns and not job.isolate:  # served: to the back of the line
                self._turns.remove(job.user_id)
                self._turns.append(job.user_id)
            job.position = None
            job.attempts += 1
            job.started_at = job.started_at or time.monotonic()
            self._running[job.job_id] = job
            self._last_event_at = time.monotonic()
            job.events.put_nowait(JobStarted(job.job_id, job.attempts))
            if not self._send(SubmitJob(job.job_id, job.request)):
                break  # the worker is dying: its exit re-queues the running jobs
        self._update_positions()

    def _finish(self, job: _QueuedJob, event: JobResult | JobFailed) -> None:
        job.finished = True
        self._running.pop(job.job_id, None)
        queue_seconds = (job.started_at or time.monotonic()) - job.submitted_at
        job.events.put_nowait(dataclasses.replace(event, queue_seconds=queue_seconds))

    def _send(self, message: SubmitJob | CancelJob | Shutdown) -> bool:
        """Send to the worker; a broken pipe is left to the supervisor, which re-runs running jobs."""
        if self._conn is None:
            return False
        try:
            self._conn.send(message)
        except OSError:
            log.warning("could not reach the GPU worker; it is being restarted")
            return False
        return True

    # -- worker messages (called on the loop by the reader thread) -----------------------------

    def _on_message(self, generation: int, message: object) -> None:
        if generation != self._generation:
            return  # a message from a worker that has since been replaced
        self._last_event_at = time.monotonic()
        if isinstance(message, WorkerReady):
            self.worker_info = message
            self._startup_crashes = 0
            self._refuse_pending_for_models()
            self._ready.set()
            self._dispatch()
        elif isinstance(message, WorkerFailed):
            self._fatal, self._no_model_loaded = message.message, True
        elif isinstance(message, ProgressBatch):
            for event in message.events:
                self._on_message(generation, event)
        elif isinstance(message, JobResult | JobFailed | JobProgress):
            job = self._running.get(message.job_id)
            if job is None:
                return
            if isinstance(message, JobProgress):
                job.events.put_nowait(message)
                return
            if isinstance(message, JobResult):
                self._crashes = 0
            if job.cancel_requested and not (isinstance(message, JobFailed) and message.cancelled):
                # Finished (or failed) before the worker saw the cancel: the user asked to cancel.
                used = JobFailed.cancellation(job.job_id, gpu_seconds=message.gpu_seconds, steps_run=message.steps_run)
                self._finish(job, used)
            elif isinstance(message, JobFailed) and message.retryable and job.attempts < self.max_attempts:
                self._retry_alone(job)
            else:
                self._finish(job, message)
            self._dispatch()

    def _refuse_pending_for_models(self) -> None:
        """Jobs queued before the models were known: answer those their model can't run."""
        for job in list(self._pending):
            try:
                self._check_model(job.request)
            except InvalidRequest as exc:
                self._pending.remove(job)
                self._finish(job, JobFailed(job.job_id, str(exc)))
        self._update_positions()

    def _retry_alone(self, job: _QueuedJob) -> None:
        """Re-queue a job whose batch failed in a way that may pass on a second, solo attempt."""
        self._running.pop(job.job_id, None)
        job.isolate = True
        self._pending.append(job)
        self._update_positions()

    # -- the supervisor -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            self._spawn()
            watchdog = asyncio.create_task(self._watch_for_hang())
            try:
                await self._exited.wait()
            finally:
                watchdog.cancel()
            if self._closing:
                return
            process, running = self._process, len(self._running)
            await self._stop_worker()
            how = describe_exit(process.exitcode if process is not None else None)
            self._on_worker_exit()
            if not self._ready.is_set() and not self._fatal:
                self._startup_crashes += 1
                if self._startup_crashes >= MAX_STARTUP_CRASHES:
                    self._fatal = (
                        f"The GPU worker exited {self._startup_crashes} times while loading the model; "
                        "see the worker's log."
                    )
            self._ready.clear()
            if self._fatal:
                self._fail_everything(self._fatal)
                return
            self._crashes += 1
            self.restarts += 1
            delay = min(30.0, 0.5 * 2 ** (self._crashes - 1))
            log.warning(
                "GPU worker pid %s %s with %d job(s) running; restarting in %.1fs (its jobs run again, each alone)",
                getattr(process, "pid", "?"), how, running, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _spawn(self) -> None:
        context = mp.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        self._generation += 1
        self._ready.clear()
        self._exited.clear()
        process = context.Process(target=self._target, args=(child_conn, self.config), name="stepgrid-worker")
        with _sigint_ignored():
            process.start()
        child_conn.close()  # so that the worker's death reads as EOF here
        self._process, self._conn = process, parent_conn
        threading.Thread(
            target=self._read_pipe, args=(parent_conn, self._generation), name="stepgrid-pipe", daemon=True
        ).start()
        log.info("started GPU worker pid %s (model %s)", process.pid, self.config.model)

    def _read_pipe(self, conn: Connection, generation: int) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if not self._call_on_loop(self._on_message, generation, message):
                return
        self._call_on_loop(self._on_pipe_closed, generation)

    def _call_on_loop(self, callback: Callable[..., None], *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            return False
        return True

    def _on_pipe_closed(self, generation: int) -> None:
        if generation == self._generation:
            self._exited.set()

    async def _watch_for_hang(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.hang_seconds / 4))
            silent = time.monotonic() - self._last_event_at
            if self._running and silent > self.hang_seconds:
                log.error("GPU worker sent nothing for %.0fs while running jobs; killing it", silent)
                if self._process is not None:
                    self._process.kill()  # the pipe's EOF then wakes the supervisor
                return

    async def _stop_worker(self) -> None:
        """Make sure the worker process is gone and its pipe closed, without blocking the loop."""
        process, conn = self._process, self._conn
        self._conn = None
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            await asyncio.to_thread(process.join, 5)
        if conn is not None:
            conn.close()

    def _on_worker_exit(self) -> None:
        crashed = list(self._running.values())
        self._running.clear()
        for job in crashed:
            if job.cancel_requested:
                self._finish(job, JobFailed.cancellation(job.job_id))
            elif job.attempts >= self.max_attempts:
                message = (
                    f"The GPU worker crashed {job.attempts} times while running this job, so it was "
                    "stopped. Try fewer steps, a smaller size, or a different scheduler."
                )
                self._finish(job, JobFailed(job.job_id, message))
            else:
                job.isolate = True
                self._pending.append(job)
        self._update_positions()

    def _fail_everything(self, message: str) -> None:
        for job in [*self._running.values(), *self._pending]:
            self._finish(job, JobFailed(job.job_id, message))
        self._pending.clear()
