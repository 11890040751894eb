"""The job service's shared part: its dependencies, the state its parts share, and what they all use.

`JobService` (bot.jobs.service) is made of parts, one concern each: admission (bot.jobs.admission), the
buttons (bot.jobs.button_actions) and driving a job to its answer (bot.jobs.driver). They share the
running jobs' state kept here: the driver tasks, who cancelled what, the jobs held while the models load,
and how jobs ended, into the ledger (bot.jobs.outcomes).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

import discord

from bot.config import Settings
from bot.job_requests import RequestDefaults
from bot.jobs.outcomes import Outcomes
from bot.jobs.policy import RequestPolicy, SettingsPolicy
from bot.limits.server import EffectiveLimits, choose_model
from bot.ops.metrics import Metrics
from bot.replies.reply import JobMessage
from bot.replies.throttle import EDIT_INTERVAL, MonotonicClock, Sleep
from bot.storage.job_store import JobRecord, JobStore, MemoryJobStore
from inference.model_info import ModelInfo
from inference.queues.base import JobQueue
from inference.requests import Request

log = logging.getLogger(__name__)

# Interaction tokens live 15 minutes; stop using ours a little before that so an upload in
# flight doesn't die with it.
TOKEN_LIFETIME = 14 * 60.0


@dataclass(frozen=True)
class Deferred:
    """An interaction acknowledged with "thinking…" (before its job is recorded): that message, the job's."""

    message_id: int | None

    @classmethod
    async def of(cls, interaction: discord.Interaction) -> Deferred:
        """Defer `interaction` with "thinking…"."""
        response = await interaction.response.defer(thinking=True)
        return cls(response.message_id if response is not None else None)


class ServiceCore(abc.ABC):
    """The service's dependencies and shared state; the parts in bot.jobs.admission, button_actions and
    driver each add one concern, and `JobService` joins them."""

    def __init__(
        self,
        queue: JobQueue,
        *,
        store: JobStore | None = None,
        policy: RequestPolicy | None = None,
        edit_interval: float = EDIT_INTERVAL,
        token_lifetime: float = TOKEN_LIFETIME,
        metrics: Metrics | None = None,
        clock: MonotonicClock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        known_models: Mapping[str, ModelInfo] | None = None,
    ) -> None:
        self.queue = queue
        # What each model can do, read from its configs before it loads (inference.models.files): a job
        # accepted while the models load is refused at once for what its model can't do, instead of later.
        self.known_models: Mapping[str, ModelInfo] = known_models or {}
        self.metrics = metrics if metrics is not None else Metrics()
        self.store: JobStore = store if store is not None else MemoryJobStore()
        self.policy: RequestPolicy = policy if policy is not None else SettingsPolicy(Settings())
        self.edit_interval = edit_interval
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled_by: dict[str, int] = {}
        self._steps: dict[str, tuple[int, int]] = {}  # running jobs: (steps done, steps in all), for the status page
        # How jobs ended, into the ledger (tried again while it refuses). The queue is told once an outcome is in,
        # looked up then, not now: it may be replaced before any job starts.
        self._outcomes = Outcomes(self.store, recorded=lambda job_id: self.queue.recorded(job_id), sleep=sleep)
        self._keep_queued = False
        self._accepting = True
        self._admission_locks: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Jobs accepted before any model was known, in the order accepted, waiting to be built.
        self._held: list[str] = []
        self._held_wakeup = asyncio.Event()  # set (and replaced) whenever a held job may go on
        self._loading_watch: asyncio.Task[None] | None = None
        self._loading_over = False
        self._stopping = False

    @property
    def active_jobs(self) -> frozenset[str]:
        """Ids of jobs whose driver is still running."""
        return frozenset(self._tasks)

    def steps_of(self, job_id: str) -> tuple[int, int] | None:
        """A running job's (steps done, steps in all) as its last progress said; None before any."""
        return self._steps.get(job_id)

    def waiting_jobs(self) -> int:
        """How many of the active jobs wait for the GPU (the rest are running or being answered)."""
        queued = sum(1 for job_id in self._tasks if self.queue.position(job_id) is not None)
        return queued + len(self._held)

    async def limits(self, guild_id: int | None) -> EffectiveLimits:
        """The limits that apply in this server: read once per command, for its defaults and its check."""
        return await self.policy.limits(guild_id)

    def model_for(self, name: str | None, limits: EffectiveLimits) -> ModelInfo | None:
        """The loaded model `name` means in this server (its default when None); None before the
        worker is ready. Refuses a model the server doesn't allow or that failed to load."""
        return choose_model(name, limits, self.queue.models, self.queue.unavailable_models)

    def defaults_for(self, model: str | None, limits: EffectiveLimits, loras: Sequence[str] = ()) -> RequestDefaults:
        """The defaults for options left out with this model (and LoRAs) in this server (commands and buttons)."""
        return limits.request_defaults(self.model_for(model, limits), loras)

    def _track(self, job_id: str, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return task

    async def record_pending_outcomes(self) -> None:
        """Try again to record the outcomes the ledger refused (a disk that was full for a moment)."""
        await self._outcomes.record_pending()

    # -- jobs accepted before the models were known ----------------------------------------------

    def _watch_loading(self) -> None:
        if self._loading_watch is None:
            self._loading_watch = asyncio.create_task(self._await_loading(), name="stepgrid-await-models")

    async def _await_loading(self) -> None:
        try:
            await self.queue.wait_ready()
        except Exception as error:  # the model failed to load: the held jobs are answered with the queue's reason
            log.info("the held jobs can't be built: %s", error)
        self._loading_over = True
        self._wake_held()

    def _unhold(self, job_id: str) -> None:
        if job_id in self._held:
            self._held.remove(job_id)
            self._wake_held()  # the next one may go on, and the others' places move up

    def _wake_held(self) -> None:
        wakeup, self._held_wakeup = self._held_wakeup, asyncio.Event()
        wakeup.set()

    @staticmethod
    async def _quietly(awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except Exception:
            log.warning("could not tell the user about a failed job", exc_info=True)

    # Admission and the driver call each other through these: admission.py starts jobs, driver.py drives them.

    @abc.abstractmethod
    async def _built(self, record: JobRecord) -> tuple[Request, str]: ...

    @abc.abstractmethod
    def _submit(self, record: JobRecord) -> None: ...

    @abc.abstractmethod
    def _spawn_driver(self, record: JobRecord, target: JobMessage) -> asyncio.Task[None]: ...
