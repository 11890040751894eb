"""The local backend: pending jobs in the bot (the fair base), GPU work in one spawned worker process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from inference.model_info import ModelInfo, ModelUnavailable
from inference.protocol import (
    CancelJob,
    JobFailed,
    JobProgress,
    JobResult,
    ProgressBatch,
    Shutdown,
    SubmitJob,
    WorkerConfig,
    WorkerFailed,
    WorkerReady,
)
from inference.queues.base import FairJobQueue, ModelsUnavailable, QueuedJob, WorkerStatus, WorkerUnavailable
from inference.requests import InvalidRequest, Request
from inference.validation import validate_for_model
from inference.worker import worker_main

log = logging.getLogger(__name__)

MAX_STARTUP_CRASHES = 3


# The worker's imports (torch, diffusers, transformers: ~15 s of CPU) happen once, in a fork server that forks each
# worker from then on: a worker restarted after a crash or a hang starts in a fork, not a fresh interpreter. The
# server never touches the GPU (importing torch doesn't initialise CUDA), so its children may, as with spawn.
PRELOAD = "inference.worker_preload"


def _worker_context() -> ForkServerContext:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD])  # read when this process's fork server starts, with its first worker
    return context


def run_worker(
    target: Callable[[Connection, WorkerConfig], None],
    environ: dict[str, str],
    cwd: str,
    conn: Connection,
    config: WorkerConfig,
) -> None:
    """A worker process's entry point. It is forked from the fork server, which was started with the bot's first
    worker: take the bot's environment and folder as of this start (a spawned process would have inherited them),
    and ignore SIGINT: Ctrl-C in a terminal signals the whole process group, and the bot (or CLI) stops its worker
    itself, instead of the worker dying mid-job with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    target(conn, config)


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


class LocalJobQueue(FairJobQueue):
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
        super().__init__(config, max_length=max_length)
        self.hang_seconds = hang_seconds
        self.max_attempts = max_attempts
        self._target = worker_target
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._generation = 0
        self._exited = asyncio.Event()
        self._fatal: str | None = None
        self._no_model_loaded = False  # the worker said so (WorkerFailed), rather than crashing
        self._last_event_at = 0.0
        self._crashes = 0
        self._startup_crashes = 0  # exits before WorkerReady in a row
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
            super()._check_model(request)
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
                device=info.device if info else "",  # as an agent's heartbeat names it; the dtype is a detail
                models=tuple(self.models) or self.config.model_names,
                detail=self._fatal or (f"{info.dtype}, loaded in {info.load_seconds:.1f}s" if info else ""),
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
        self._answer_unfinished()

    # -- the public queue API (the rest is the fair base's) --------------------------------------

    def submit(self, request: Request, *, user_id: str, job_id: str | None = None) -> str:
        if self._fatal:
            raise WorkerUnavailable(self._fatal)
        return super().submit(request, user_id=user_id, job_id=job_id)

    def _cancel_running(self, job: QueuedJob) -> None:
        # The worker answers; if it dies first, the job ends as cancelled instead of re-running.
        self._send(CancelJob(job.job_id))

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if not self._ready.is_set() or self._conn is None or self._draining:
            return
        while self._pending:
            if any(job.isolate for job in self._running.values()):
                break
            job = self._pending[0]
            busy_lanes = sum(j.lane_count for j in self._running.values())
            if self._running and (job.isolate or busy_lanes + job.lane_count > self.config.max_batch_lanes):
                break
            self._start(job)
            self._on_started(job, job.attempts + 1)
            self._last_event_at = time.monotonic()
            if not self._send(SubmitJob(job.job_id, job.request)):
                break  # the worker is dying: its exit re-queues the running jobs
        self._update_positions()

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
                self._on_progress(job, message)
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

    def _retry_alone(self, job: QueuedJob) -> None:
        """Re-queue a job whose batch failed in a way that may pass on a second, solo attempt."""
        self._running.pop(job.job_id, None)
        job.isolate = True
        self._pending.append(job)
        self._update_positions()

    # -- the supervisor -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            await self._spawn()
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

    async def _spawn(self) -> None:
        context = _worker_context()
        parent_conn, child_conn = context.Pipe(duplex=True)
        self._generation += 1
        self._ready.clear()
        self._exited.clear()
        process = context.Process(
            target=run_worker,
            args=(self._target, dict(os.environ), os.getcwd(), child_conn, self.config),
            name="stepgrid-worker",
        )
        # The first start waits while the fork server imports the worker's libraries: off the event loop.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:  # closed while starting: no worker is left behind
            with contextlib.suppress(Exception):
                await starting
            if process.pid is not None:
                process.kill()
                await asyncio.to_thread(process.join, 5)
            parent_conn.close()
            raise
        finally:
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
            else:
                self._after_crash(job)
        self._update_positions()

    def _after_crash(self, job: QueuedJob) -> None:
        """A job whose worker died under it runs again, alone, until it has had its attempts."""
        if job.attempts >= self.max_attempts:
            message = (
                f"The GPU worker crashed {job.attempts} times while running this job, so it was "
                "stopped. Try fewer steps, a smaller size, or a different scheduler."
            )
            self._finish(job, JobFailed(job.job_id, message))
        else:
            job.isolate = True
            self._pending.append(job)
