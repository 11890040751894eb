"""The bot's side of the Redis backend: the same JobQueue, with GPU agents on any hosts behind Redis.

The bot keeps the pending jobs and their fair order here, exactly as the local queue does, and
releases a job into its model's stream only while the live agents have a free lane for it, so that
round robin holds across the whole fleet. Agents (`inference.queues.agent`) answer through
`result:<job>`; a notice on this bot's events stream wakes the bot, and a sweep every
`poll_seconds` reads the results of everything released, so a lost notice, a Redis restart or a bot
restart only delays an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inference.model_info import ModelInfo
from inference.protocol import JobFailed, JobProgress, JobResult, WorkerConfig
from inference.queues.base import FairJobQueue, QueuedJob, WorkerStatus
from inference.queues.lease import BotIdInUse, BotLease
from inference.queues.shared_order import Released, SharedOrder
from inference.queues.wire import (
    DEFAULT_BOT_ID,
    UNREADABLE_RESULT_MESSAGE,
    Keys,
    WireError,
    check_redis_url,
    dumps,
    keep_running,
    loads,
    redis_problem,
)
from inference.requests import InvalidRequest, Request
from inference.validation import validate_for_model

log = logging.getLogger(__name__)


class RedisUnreachable(RuntimeError):
    """Redis did not answer, or refused (a password, full memory); the message names the URL (without
    its password) and the fix."""


async def ping(url: str, *, wait_seconds: float = 3.0) -> None:
    """Raise RedisUnreachable unless Redis at `url` answers within `wait_seconds`."""
    check_redis_url(url)
    client = aioredis.from_url(url, socket_connect_timeout=wait_seconds, socket_timeout=wait_seconds)
    try:
        await client.ping()  # type: ignore[misc]
    except (RedisError, OSError) as error:
        raise RedisUnreachable(redis_problem(url, error, fix_url="STEPGRID_REDIS_URL/--redis")) from None
    finally:
        await client.aclose()


@dataclass(frozen=True)
class AgentInfo:
    """One live agent, as its heartbeat says."""

    agent_id: str
    host: str
    device: str
    state: str  # "loading", "ready" or "failed" (and "unusable", as the bot sees one serving no model it knows)
    model_names: tuple[str, ...]
    models: tuple[ModelInfo, ...]
    lanes: int
    busy_lanes: int
    jobs_done: int
    heartbeat_at: float
    message: str = ""

    @classmethod
    def from_hash(cls, agent_id: str, fields: dict[bytes, bytes]) -> AgentInfo:
        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode()

        state, message = text("state"), text("message")
        try:
            infos = loads(fields[b"infos"]) if fields.get(b"infos") else ()
            if not (isinstance(infos, tuple) and all(isinstance(info, ModelInfo) for info in infos)):
                raise WireError(f"a {type(infos).__name__} where model descriptions belong")
        except WireError as error:  # an agent of another version: shown, and given no job
            infos = ()
            state = "unusable"
            message = f"its heartbeat can't be read here ({error}); run the bot's Stepgrid version on it"
        return cls(
            agent_id=agent_id,
            host=text("host"),
            device=text("device"),
            state=state,
            model_names=tuple(name for name in text("models").split(",") if name),
            models=infos,
            lanes=int(text("lanes") or 0),
            busy_lanes=int(text("busy") or 0),
            jobs_done=int(text("done") or 0),
            heartbeat_at=float(text("at") or 0.0),
            message=message,
        )


async def read_agents(client: aioredis.Redis, keys: Keys) -> list[AgentInfo]:
    """Every agent whose heartbeat has not expired."""
    names = [name async for name in client.scan_iter(match=keys.agent_pattern, count=500)]
    if not names:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        hashes = await pipe.execute()
    prefix = len(keys.agent(""))
    return sorted(
        (
            AgentInfo.from_hash(name.decode()[prefix:], fields)
            for name, fields in zip(names, hashes, strict=True)
            if fields
        ),
        key=lambda agent: agent.agent_id,
    )


def _no_agent_message(model: str, serving: list[str]) -> str:
    others = f" Models served now: {', '.join(serving)}." if serving else " No GPU worker is connected at all."
    return (
        f"No GPU worker serves the model {model!r} right now, so the job was not queued; "
        f"the operator can start one with `stepgrid worker --models {model}`.{others}"
    )


class RedisJobQueue(FairJobQueue):
    """The fair base's pending list and order; GPU work on the agents behind Redis."""

    def __init__(
        self,
        config: WorkerConfig,
        url: str,
        *,
        max_length: int = 100,
        bot_id: str = DEFAULT_BOT_ID,
        keys: Keys | None = None,
        poll_seconds: float = 1.0,
        orphan_seconds: float = 60.0,
        lease_seconds: float | None = None,
    ) -> None:
        super().__init__(config, max_length=max_length)
        self.url = check_redis_url(url)
        self.bot_id = bot_id
        # With a lease (`stepgrid run`), this process holds its bot id on Redis (inference.queues.lease).
        self.lease_seconds = lease_seconds
        self.lease: BotLease | None = None
        self._lease_problem: str | None = None
        self.keys = keys or Keys()
        self.poll_seconds = poll_seconds
        self.orphan_seconds = orphan_seconds
        self.agents: list[AgentInfo] = []
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._model_of: dict[str, str] = {}  # job -> the model stream it goes to
        self._unreleased: set[str] = set()  # taken from this process's list, not yet handed to Redis
        self._enqueued: set[str] = set()  # waiting in the shared fair order (inference.queues.shared_order)
        self._order: SharedOrder | None = None
        self._released_at: dict[str, float] = {}
        self._model_seen: dict[str, float] = {}  # model -> when an agent serving it was last seen
        self._wake_release = asyncio.Event()
        self._events_from = "$"
        self.reconnects = 0
        self._agents_known = False
        self._connection_problem: str | None = None
        self._told_unknown: set[tuple[str, tuple[str, ...]]] = set()  # (agent, models) already logged

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = aioredis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=5)
        self._order = SharedOrder(self._client, self.bot_id, self.keys)
        if self.lease_seconds is not None:
            self.lease = BotLease(self._client, self.bot_id, seconds=self.lease_seconds, keys=self.keys)
            try:
                await self.lease.acquire()  # BotIdInUse: a second live process with this id is refused at start
            except (RedisError, OSError) as error:  # Redis down: jobs wait, and the lease is taken when it is back
                log.warning(
                    "bot id %r not held on Redis yet (%s); retrying", self.bot_id, redis_problem(self.url, error)
                )
        self._tasks = [
            asyncio.create_task(self._forever("sweep", self._sweep_once), name="stepgrid-redis-sweep"),
            asyncio.create_task(self._forever("events", self._read_events_once), name="stepgrid-redis-events"),
            asyncio.create_task(self._forever("release", self._release_once), name="stepgrid-redis-release"),
        ]
        if self.lease is not None:
            lease = asyncio.create_task(self._forever("lease", self._lease_once), name="stepgrid-redis-lease")
            self._tasks.append(lease)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Released jobs go on running on the agents; their results wait in Redis for the next start.
        self._answer_unfinished()
        if self._client is not None:
            if self.lease is not None and not self.lease.lost:
                with contextlib.suppress(RedisError, OSError):  # else it expires on its own
                    await self.lease.release()
            await self._client.aclose()

    @property
    def models(self) -> dict[str, ModelInfo]:
        found: dict[str, ModelInfo] = {}
        for agent in self.agents:
            if agent.state == "ready":
                for model in agent.models:
                    found.setdefault(model.name, model)
        default = self._default_model(found)
        if default in found:
            found = {default: found[default], **found}
        return found

    @property
    def connection_problem(self) -> str | None:
        return self._connection_problem

    @property
    def unavailable(self) -> str | None:
        return self._lease_problem

    @property
    def lease_lost(self) -> bool:
        """This process no longer holds its bot id: other processes answer its jobs now; it must stop."""
        return self.lease is not None and self.lease.lost

    async def _lease_once(self) -> None:
        assert self.lease is not None
        if self.lease.lost:
            return
        if self.lease._renewed_at is None:
            try:
                await self.lease.acquire(wait_for_claim=0)
            except BotIdInUse as error:
                self._lease_problem = str(error)
                self.lease.lost = True
                log.error("%s", error)
                return
        elif not await self.lease.renew():
            self._lease_problem = f"this process lost its bot id {self.bot_id!r} on Redis; restart it"
            return
        await asyncio.sleep(self.lease.seconds / 4)

    def _may_answer(self) -> bool:
        """Whether results may be handed to the bot now: without a lease always; with one only while it is surely
        held (a process cut off from Redis for longer than its lease may have had its jobs taken over)."""
        return self.lease is None or self.lease.fresh

    def workers(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(
                name=f"agent {agent.agent_id} on {agent.host}",
                state=agent.state,
                device=agent.device,
                models=agent.model_names,
                detail=agent.message or f"{agent.busy_lanes}/{agent.lanes} lanes busy, {agent.jobs_done} jobs done",
            )
            for agent in self.agents
        ]

    # -- cancelling (the rest of the public API is the fair base's) ------------------------------

    def _cancel_running(self, job: QueuedJob) -> None:
        if job.job_id in self._unreleased:
            self._unreleased.discard(job.job_id)
            self._finish(job, JobFailed.cancellation(job.job_id))
        elif job.job_id in self._enqueued:
            self._background(self._withdraw_or_cancel(job))
        else:
            self._background(self._send_cancel(job.job_id))

    async def _withdraw_or_cancel(self, job: QueuedJob) -> None:
        """A job waiting in the shared order leaves it; one released meanwhile is cancelled on its agent."""
        if self._order is not None and await self._order.withdraw(job.job_id):
            self._enqueued.discard(job.job_id)
            if not job.finished:
                self._finish(job, JobFailed.cancellation(job.job_id))
                self._update_positions()
        else:
            await self._send_cancel(job.job_id)

    def recorded(self, job_id: str) -> None:
        """Drop the job's result (150–660 KB) once the ledger has its outcome, rather than after an hour.

        Until then it stays, so that a bot restarted between delivery and recording still finds it.
        """
        if self._client is not None and not self._closing:
            self._background(self._forget(job_id))

    async def _forget(self, job_id: str) -> None:
        keys = self.keys
        try:
            await self._redis().delete(keys.result(job_id), keys.released(job_id), keys.cancel(job_id))
        except (RedisError, OSError) as error:  # it expires on its own within the hour
            log.debug("job %s: its result stays until it expires (%s)", job_id, error, extra={"job_id": job_id})

    # -- models ------------------------------------------------------------------------------

    def _served(self) -> dict[str, list[AgentInfo]]:
        served: dict[str, list[AgentInfo]] = {}
        for agent in self.agents:
            if agent.state in ("loading", "ready"):
                for name in agent.model_names:
                    served.setdefault(name, []).append(agent)
        return served

    def _as_usable(self, agent: AgentInfo) -> AgentInfo:
        """`agent` with only the models this bot knows: one started before the bot, with other models, was
        not checked when it started, and a job for the bot's default model must not run on another model."""
        known = self.config.model_names
        unknown = tuple(name for name in agent.model_names if name not in known)
        if not unknown:
            return agent
        usable = tuple(name for name in agent.model_names if name in known)
        why = (
            f"serves {', '.join(unknown)}, which this bot does not know (it knows {', '.join(known)}); "
            f"restart it with --models set as the bot's STEPGRID_MODEL"
        )
        if (agent.agent_id, unknown) not in self._told_unknown:
            self._told_unknown.add((agent.agent_id, unknown))
            log.warning("GPU agent %s on %s %s", agent.agent_id, agent.host, why)
        return dataclasses.replace(
            agent,
            state=agent.state if usable or agent.state != "ready" else "unusable",
            model_names=usable,
            models=tuple(model for model in agent.models if model.name in known),
            message=agent.message or why,
        )

    def _default_model(self, served: Mapping[str, object]) -> str:
        for name in self.config.model_names:
            if name in served:
                return name
        return next(iter(served), self.config.model_names[0] if self.config.model_names else "")

    def _resolve(self, request: Request) -> str:
        return request.model or self._default_model(self._served())

    def _eta_model(self, request: Request) -> str:
        return self._resolve(request)

    def _eta_engines(self) -> tuple[int, int]:
        """Every live agent's lanes, as if they shared the work evenly: a rough figure (the bot can't see
        which agent runs what); one agent's batch cap when none is known."""
        agents = [agent for agent in self.agents if agent.state == "ready"]
        if not agents:
            return self.config.max_batch_lanes, 1
        return sum(agent.lanes for agent in agents), len(agents)

    def _check_model(self, request: Request) -> None:
        if not self._agents_known:  # start-up recovery runs before the first look at the agents
            super()._check_model(request)
            return
        served = self._served()
        name = request.model or self._default_model(served)
        if name not in served:
            raise InvalidRequest(_no_agent_message(name, sorted(served)))
        info = self.models.get(name)
        if info is not None:
            validate_for_model(request, info)

    # -- release into the streams (the fair order's head, while agents have room) ------------------

    def _capacity(self) -> dict[str, int]:
        return {name: sum(agent.lanes for agent in agents) for name, agents in self._served().items()}

    def _dispatch(self) -> None:
        """Hand the head of this process's fair order to the shared one in Redis while the agents have room for
        it (counting this process's jobs handed over and not answered); the shared order (inference.queues.
        shared_order) then releases by member across every bot process on this Redis."""
        if not self._ready.is_set() or self._closing or self._draining:
            return
        capacity = self._capacity()
        in_flight: dict[str, int] = {}
        for job in self._running.values():
            model = self._model_of.get(job.job_id, "")
            in_flight[model] = in_flight.get(model, 0) + job.lane_count
        blocked: set[str] = set()
        for job in list(self._pending):
            model = self._resolve(job.request)
            if model in blocked or model not in capacity:
                blocked.add(model)
                continue
            busy = in_flight.get(model, 0)
            if busy and busy + job.lane_count > capacity[model]:
                blocked.add(model)  # later jobs for this model keep their place behind this one
                continue
            place = job.position
            self._start(job)
            job.position = place  # until the shared order says where it stands
            self._model_of[job.job_id] = model
            self._unreleased.add(job.job_id)
            in_flight[model] = busy + job.lane_count
        self._update_positions()
        self._wake_release.set()  # a release too: other processes' answers free lanes

    async def _release_once(self) -> None:
        await self._wake_release.wait()
        self._wake_release.clear()
        if self._closing or self._draining:
            return
        client = self._redis()
        for job_id in sorted(self._unreleased, key=lambda j: self._jobs[j].seq if j in self._jobs else 0):
            running = self._running.get(job_id)
            if running is None or job_id not in self._unreleased:
                continue
            # Handed over from here on: a fast release by another bot process can make an agent's first
            # notices come back before the reply does, and the events reader drops notices of unreleased jobs.
            self._unreleased.discard(job_id)
            try:
                await self._hand_over(client, running)
            except BaseException:
                if job_id in self._running:
                    self._unreleased.add(job_id)
                raise
        assert self._order is not None
        self._after_release(await self._order.release(self._capacity()))

    async def _hand_over(self, client: aioredis.Redis, job: QueuedJob) -> None:
        keys = self.keys
        result, entry = await client.mget(keys.result(job.job_id), keys.released(job.job_id))
        if result is not None:  # finished while this bot was away (a restart): answer it now
            self._deliver(job.job_id, result)
            if job.finished:
                return
        if entry is not None or result is not None:  # released by this bot's previous run (or another's)
            self._released_at[job.job_id] = time.monotonic()
            job.position = None
            return
        model = self._model_of[job.job_id]
        # The agent's own default may be another model: name the one this stream is for.
        request = job.request if job.request.model else dataclasses.replace(job.request, model=model)
        assert self._order is not None
        state = await self._order.enqueue(
            job.job_id, user_id=job.user_id, model=model, lanes=job.lane_count, request=dumps(request)
        )
        if state == "queued":
            self._enqueued.add(job.job_id)
            if job.job_id not in self._running:  # cancelled while it was being handed over
                await self._withdraw_or_cancel(job)
        else:  # released meanwhile by another process, or even answered: the sweep collects it
            self._released_at[job.job_id] = time.monotonic()
            job.position = None
        log.debug("job %s in the shared order (%s)", job.job_id, state, extra={"job_id": job.job_id})

    def _after_release(self, outcome: Released) -> None:
        """This process's jobs that left the shared order were released (by any bot process); the others'
        places are their places in the whole deployment's order."""
        waiting = set(outcome.waiting)
        now = time.monotonic()
        for job_id in [job_id for job_id in self._enqueued if job_id not in waiting]:
            self._enqueued.discard(job_id)
            self._released_at.setdefault(job_id, now)
            if (job := self._running.get(job_id)) is not None:
                job.position = None
        for place, job_id in enumerate(outcome.waiting, start=1):
            job = self._running.get(job_id)
            if job is not None and job_id in self._enqueued:
                self._tell_place(job, place)

    async def _send_cancel(self, job_id: str) -> None:
        for attempt in range(30):
            try:
                await self._redis().set(self.keys.cancel(job_id), b"1", ex=3600)
                return
            except RedisError as error:
                log.warning(
                    "could not send the cancel of job %s (%s); retrying", job_id, error, extra={"job_id": job_id}
                )
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    # -- what comes back ---------------------------------------------------------------------

    async def _read_events_once(self) -> None:
        client = self._redis()
        stream = self.keys.events(self.bot_id)
        if self._events_from == "$":  # from the newest notice on, with no gap between two reads
            newest = await client.xrevrange(stream, count=1)
            self._events_from = newest[0][0].decode() if newest else "0-0"
        replies = await client.xread({stream: self._events_from}, count=500, block=1000)
        for _, entries in replies:
            for entry_id, fields in entries:
                self._events_from = entry_id.decode()
                await self._on_notice(client, fields)

    async def _on_notice(self, client: aioredis.Redis, fields: dict[bytes, bytes]) -> None:
        job_id = fields[b"job"].decode()
        job = self._running.get(job_id)
        if job is None or job_id in self._unreleased:
            return
        self._enqueued.discard(job_id)  # an agent has it: released, by whichever bot process
        job.position = None
        kind = fields[b"kind"]
        if kind == b"started":
            self._on_started(job, int(fields[b"attempt"]))
        elif kind == b"progress":
            try:
                event = loads(fields[b"event"])
            except WireError:
                return  # an agent of another version: its answer says so; a progress notice is not worth a line
            if isinstance(event, JobProgress):
                self._on_progress(job, event)
        elif kind == b"done":
            data = await client.get(self.keys.result(job_id))
            if data is not None:
                self._deliver(job_id, data)

    def _deliver(self, job_id: str, data: bytes) -> None:
        job = self._running.get(job_id)
        if job is None or job.finished or not self._may_answer():
            return  # a result left for later stays in Redis: the sweep delivers it once the lease is renewed
        try:
            event = loads(data)
            if not isinstance(event, JobResult | JobFailed):
                raise WireError(f"a {type(event).__name__} where a result belongs")
        except WireError as error:
            log.error(
                "job %s: its answer can't be read (%s): the agent that ran it runs another Stepgrid version; "
                "run the bot's version on every agent",
                job_id,
                error,
                extra={"job_id": job_id},
            )
            event = JobFailed(job_id, UNREADABLE_RESULT_MESSAGE)
        self._unreleased.discard(job_id)
        self._enqueued.discard(job_id)
        self._released_at.pop(job_id, None)
        self._model_of.pop(job_id, None)
        if job.cancel_requested and not (isinstance(event, JobFailed) and event.cancelled):
            event = JobFailed.cancellation(job_id, gpu_seconds=event.gpu_seconds, steps_run=event.steps_run)
        self._finish(job, event)
        self._dispatch()

    # -- the sweep: agents, results, lost stream entries ----------------------------------------

    async def _sweep_once(self) -> None:
        client = self._redis()
        await client.set(self.keys.bot_models, ",".join(self.config.model_names))
        self.agents = [self._as_usable(agent) for agent in await read_agents(client, self.keys)]
        self._agents_known = True
        now = time.monotonic()
        for name in self._served():
            self._model_seen[name] = now
        if not self._ready.is_set() and any(agent.state == "ready" for agent in self.agents):
            self._ready.set()
        released = [job_id for job_id in self._running if job_id not in self._unreleased]
        if released:
            await self._collect_results(client, released)
        self._refuse_orphans(now)
        self._dispatch()  # and a release: other processes' answers free lanes this process's jobs wait for
        await asyncio.sleep(self.poll_seconds)

    async def _collect_results(self, client: aioredis.Redis, job_ids: list[str]) -> None:
        results = await client.mget([self.keys.result(job_id) for job_id in job_ids])
        missing = []
        for job_id, data in zip(job_ids, results, strict=True):
            if data is not None:
                self._deliver(job_id, data)
            elif time.monotonic() - self._released_at.get(job_id, time.monotonic()) > 5 * self.poll_seconds:
                missing.append(job_id)
        if missing:
            await self._re_release_lost(client, missing)

    async def _re_release_lost(self, client: aioredis.Redis, job_ids: list[str]) -> None:
        """A Redis that lost its data (restarted without persistence) lost released jobs: send them again."""
        markers = await client.mget([self.keys.released(job_id) for job_id in job_ids])
        for job_id, marker in zip(job_ids, markers, strict=True):
            if job_id not in self._running:
                continue
            if marker is not None:
                model, entry = marker.decode().split(" ", 1)
                if await client.xrange(self.keys.jobs(model), entry, entry):
                    continue
                if await client.get(self.keys.result(job_id)) is not None:
                    continue
                await client.delete(self.keys.released(job_id))
            log.warning(
                "job %s is no longer in Redis (was it restarted without its data?); releasing it again",
                job_id,
                extra={"job_id": job_id},
            )
            self._unreleased.add(job_id)
            self._wake_release.set()

    def _refuse_orphans(self, now: float) -> None:
        """Waiting jobs for a model that no agent has served for `orphan_seconds` are answered, not kept."""
        served = self._served()
        for job in list(self._pending):
            model = self._resolve(job.request)
            if model in served:
                continue
            since = max(self._model_seen.get(model, 0.0), job.submitted_at)
            if now - since > self.orphan_seconds:
                self._pending.remove(job)
                self._finish(job, JobFailed(job.job_id, _no_agent_message(model, sorted(served))))
        self._update_positions()

    # -- plumbing ------------------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        assert self._client is not None, "start() first"
        return self._client

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        task.add_done_callback(lambda done: self._tasks.remove(done) if done in self._tasks else None)

    async def _forever(self, name: str, once: Callable[[], Awaitable[None]]) -> None:
        """Run `once` again and again; while Redis is unreachable, jobs wait and readiness says why."""

        def on_redis_error(error: Exception) -> None:
            self._connection_problem = f"{redis_problem(self.url, error)}; jobs wait meanwhile"
            if name == "events":
                self._events_from = "$"  # a restarted Redis numbers its stream entries anew
            if name == "release":
                self._wake_release.set()

        def on_reachable_again() -> None:
            log.info("Redis is reachable again (%s)", name)
            self.reconnects += 1
            self._connection_problem = None

        await keep_running(
            name, once, url=self.url, running=lambda: not self._closing,
            on_redis_error=on_redis_error, on_reachable_again=on_reachable_again,
        )  # fmt: skip
