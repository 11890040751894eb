"""A GPU agent: the local queue's supervisor and spawned worker, fed from the Redis streams.

`stepgrid worker --redis URL` runs one of these per GPU. It reads as many jobs as it has free lanes
(XREADGROUP), so continuous batching still fills the card, hands them to a `LocalJobQueue` (the
same supervisor and spawned worker a one-box bot uses), forwards progress to the bot's events
stream, and acknowledges a job only after its answer is stored (`SET result NX`, then XACK).

While a job runs the agent refreshes its claim; a janitor in every agent takes over jobs whose claim
went stale (an agent killed, a host gone) with XAUTOCLAIM, and dead-letters a job on its fourth
delivery: a job that brought down the worker of every agent that took it is answered as a failure.
A job whose worker crashed is left unacknowledged for that janitor rather than retried in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from inference.protocol import JobFailed, JobProgress, JobResult, WorkerConfig
from inference.queues.base import QueuedJob
from inference.queues.local import LocalJobQueue
from inference.queues.wire import (
    DEAD_LETTER_MESSAGE,
    GROUP,
    MAX_DELIVERIES,
    RESULT_TTL_SECONDS,
    UNREADABLE_JOB_MESSAGE,
    UNREADABLE_JOB_OTHER_VERSION_MESSAGE,
    Keys,
    UnknownWireType,
    WireError,
    check_redis_url,
    describe_url,
    dumps,
    keep_running,
    loads,
    redis_problem,
)
from inference.requests import GenerateRequest, Request
from inference.worker import worker_main

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# The answer a job gets from the agent's own queue when the worker died under it: not stored,
# not acknowledged; another delivery (by the janitor, after the claim went stale) decides.
_WORKER_DIED = "\x00worker died"


class _AgentQueue(LocalJobQueue):
    """The local queue, except that a job whose worker died is handed back instead of re-run here."""

    def _after_crash(self, job: QueuedJob) -> None:
        self._finish(job, JobFailed(job.job_id, _WORKER_DIED, retryable=True))


@dataclass(eq=False)
class _Delivery:
    job_id: str
    stream: str
    entry: str
    bot_id: str
    user_id: str
    request: Request
    attempt: int
    task: asyncio.Task[None] | None = field(default=None, repr=False)


# Deletes the consumers of one stream's group that hold no pending entry, have been idle at least
# ARGV[2] ms and whose agent's heartbeat (ARGV[3] .. name) is gone; ARGV[4], when not empty, limits it
# to that one consumer. In one script, so that no read can slip between the look and the delete
# (deleting a consumer drops its pending entries, and the jobs with them).
_DELETE_IDLE_CONSUMERS = """
local deleted = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if (ARGV[4] == '' or info['name'] == ARGV[4]) and info['pending'] == 0
      and info['idle'] >= tonumber(ARGV[2]) and redis.call('EXISTS', ARGV[3] .. info['name']) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
"""

_UNREAD = GenerateRequest("")  # the request of a delivery that could not be read: only its ids are used


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value else ""


def _read_entry(stream: str, entry: str, fields: dict[bytes, bytes], attempt: int) -> _Delivery:
    """A stream entry as a delivery; raises WireError (or KeyError) when this version can't read it."""
    request = loads(fields[b"request"])
    if not isinstance(request, Request):
        raise WireError(f"a {type(request).__name__} where a request belongs")
    return _Delivery(fields[b"job"].decode(), stream, entry, fields[b"bot"].decode(), fields[b"user"].decode(),
                     request, attempt)  # fmt: skip


@dataclass(frozen=True)
class AgentTimings:
    """How often the agent does what; tests shrink these."""

    heartbeat_seconds: float = 5.0
    claim_refresh_seconds: float = 5.0
    min_idle_seconds: float = 60.0  # a claim older than this is taken over by a janitor
    tick_seconds: float = 0.5  # cancels are looked for this often


class RedisAgent:
    """One GPU's worth of lanes serving the streams of the models it loaded."""

    def __init__(
        self,
        url: str,
        config: WorkerConfig,
        *,
        agent_id: str | None = None,
        keys: Keys | None = None,
        timings: AgentTimings = AgentTimings(),
        hang_seconds: float = 120.0,
        max_deliveries: int = MAX_DELIVERIES,
        worker_target: Callable[[Connection, WorkerConfig], None] = worker_main,
    ) -> None:
        self.url = check_redis_url(url)
        self.config = config
        self.host = socket.gethostname()
        self.agent_id = agent_id or f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.keys = keys or Keys()
        self.timings = timings
        self.max_deliveries = max_deliveries
        self.local = _AgentQueue(config, max_length=10_000, hang_seconds=hang_seconds, worker_target=worker_target)
        self.jobs_done = 0
        self.dead_lettered = 0
        self._state = "loading"
        self._message = ""
        self._running: dict[str, _Delivery] = {}
        self._lane_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def model_names(self) -> tuple[str, ...]:
        if self.local.worker_info is not None:
            return tuple(self.local.models)
        return self.config.model_names

    @property
    def busy_lanes(self) -> int:
        return sum(len(job.request.lane_steps) for job in self._running.values())

    @property
    def streams(self) -> list[str]:
        return [self.keys.jobs(name) for name in self.model_names]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start the worker, heartbeat as loading; `serve` starts taking jobs once it is ready."""
        self._client = aioredis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=5)
        await self.local.start()
        self._tasks = [asyncio.create_task(self._forever("heartbeat", self._heartbeat_once), name="agent-heartbeat")]

    async def serve(self) -> None:
        """Wait for the worker, then take jobs until `stop`."""
        await self.local.wait_ready()
        self._state = "ready"
        self._message = ""
        client = self._redis()
        await self._retrying(lambda: self._create_groups(client))
        await self._retrying(self._heartbeat)
        log.info("agent %s serving %s on %s", self.agent_id, ", ".join(self.model_names), describe_url(self.url))
        self._tasks += [
            asyncio.create_task(self._forever("fetch", self._fetch_once), name="agent-fetch"),
            asyncio.create_task(self._forever("claims", self._claims_once), name="agent-claims"),
            asyncio.create_task(self._forever("janitor", self._janitor_once), name="agent-janitor"),
        ]
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop taking jobs and close; jobs still running stay pending in Redis for another agent."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for delivery in list(self._running.values()):
            if delivery.task is not None:
                delivery.task.cancel()
        for task in [*self._tasks, *(d.task for d in self._running.values() if d.task)]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.local.close()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self.keys.agent(self.agent_id))
                # Its consumer goes too, unless jobs it was running are still pending on it: those
                # wait for a janitor, which deletes the consumer once they have been taken over.
                await self._delete_idle_consumers(min_idle_ms=0, only=self.agent_id)
            await self._client.aclose()

    # -- heartbeats ------------------------------------------------------------------------------

    async def _heartbeat_once(self) -> None:
        if self.local.unavailable and self._state != "failed":
            self._state, self._message = "failed", self.local.unavailable
        await self._heartbeat()
        await asyncio.sleep(self.timings.heartbeat_seconds)

    async def _heartbeat(self) -> None:
        info = self.local.worker_info
        fields: dict[str, str | bytes | int | float] = {
            "host": self.host,
            "pid": os.getpid(),
            "device": info.device if info else self.config.device,
            "state": self._state,
            "message": self._message,
            "models": ",".join(self.model_names),
            "infos": dumps(info.models if info else ()),
            "lanes": self.config.max_batch_lanes,
            "busy": self.busy_lanes,
            "done": self.jobs_done,
            "at": time.time(),
        }
        key = self.keys.agent(self.agent_id)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            # Generous: a stalled loop must not make a live agent look gone (a dead one lingers this long).
            pipe.expire(key, max(10, round(3 * self.timings.heartbeat_seconds)))
            await pipe.execute()

    async def _create_groups(self, client: aioredis.Redis) -> None:
        for stream in self.streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: another agent made it first
                await client.xgroup_create(stream, GROUP, id="0", mkstream=True)

    # -- taking jobs ---------------------------------------------------------------------------

    async def _fetch_once(self) -> None:
        free = self.config.max_batch_lanes - self.busy_lanes
        if free <= 0:
            self._lane_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lane_freed.wait(), timeout=1.0)
            return
        client = self._redis()
        try:
            replies = await client.xreadgroup(
                GROUP, self.agent_id, dict.fromkeys(self.streams, ">"), count=free, block=1000
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._create_groups(client)  # a Redis that lost its data: make the groups again
            return
        for stream, entries in replies or []:
            for entry, fields in entries:
                await self._take_safely(stream.decode(), entry.decode(), fields, attempt=None)

    async def _take_safely(self, stream: str, entry: str, fields: dict[bytes, bytes], *, attempt: int | None) -> None:
        """`_take`, except that a bug on one entry leaves it pending for the janitor and the batch goes on."""
        try:
            await self._take(stream, entry, fields, attempt=attempt)
        except (RedisError, OSError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("could not take entry %s of %s; leaving it to another delivery", entry, stream)

    async def _take(self, stream: str, entry: str, fields: dict[bytes, bytes], *, attempt: int | None) -> None:
        if not fields:  # deleted while it was pending: nothing to run
            await self._redis().xack(stream, GROUP, entry)
            return
        try:
            delivery = _read_entry(stream, entry, fields, attempt or 1)
        except (WireError, KeyError, UnicodeDecodeError) as error:
            await self._refuse_unreadable(stream, entry, fields, error)
            return
        if delivery.job_id in self._running:
            return  # a janitor handed this agent a job it is already running
        if attempt is None:
            delivery.attempt = await self._deliveries(stream, entry)
        job_id = delivery.job_id
        self._running[job_id] = delivery
        delivery.task = asyncio.create_task(self._run(delivery), name=f"agent-job-{job_id[:8]}")

    async def _deliveries(self, stream: str, entry: str) -> int:
        pending = await self._redis().xpending_range(stream, GROUP, min=entry, max=entry, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _run(self, delivery: _Delivery) -> None:
        job_id = delivery.job_id
        try:
            answer = await self._retrying(lambda: self._redis().exists(self.keys.result(job_id)))
            if answer:  # a duplicate delivery of a job already answered
                await self._retrying(lambda: self._acknowledge(delivery))
                return
            await self._notify(delivery, {"kind": "started", "attempt": delivery.attempt})
            self.local.submit(delivery.request, user_id=delivery.user_id, job_id=job_id)
            final: JobResult | JobFailed | None = None
            async for event in self.local.events(job_id):
                if isinstance(event, JobProgress):
                    await self._notify(delivery, {"kind": "progress", "event": dumps(event)})
                elif isinstance(event, JobResult | JobFailed):
                    final = event
            if final is None or (isinstance(final, JobFailed) and final.message == _WORKER_DIED):
                log.warning(
                    "job %s: the worker died under it; leaving it to another delivery", job_id, extra={"job_id": job_id}
                )
                return
            await self._retrying(lambda: self._answer(delivery, final))
            self.jobs_done += 1
        except Exception:
            log.exception("job %s: could not run it; leaving it to another delivery", job_id, extra={"job_id": job_id})
        finally:
            self._running.pop(job_id, None)
            self._lane_freed.set()

    async def _answer(self, delivery: _Delivery, event: JobResult | JobFailed) -> None:
        """Store the answer (the first one wins), tell the bot, then acknowledge."""
        client = self._redis()
        await client.set(self.keys.result(delivery.job_id), dumps(event), nx=True, ex=RESULT_TTL_SECONDS)
        await self._notify(delivery, {"kind": "done"})
        await self._acknowledge(delivery)

    async def _acknowledge(self, delivery: _Delivery) -> None:
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.xack(delivery.stream, GROUP, delivery.entry)
            pipe.xdel(delivery.stream, delivery.entry)
            await pipe.execute()

    async def _notify(self, delivery: _Delivery, fields: dict[str, str | bytes | int]) -> None:
        """Best effort: a lost notice costs the bot one sweep, never an answer."""
        try:
            await self._redis().xadd(
                self.keys.events(delivery.bot_id),
                {"job": delivery.job_id, **fields},  # type: ignore[dict-item]
                maxlen=1_000,  # progress carries previews: keep the stream short
                approximate=True,
            )
        except (RedisError, OSError) as error:
            log.debug("job %s: notice lost (%s)", delivery.job_id, error, extra={"job_id": delivery.job_id})

    # -- claims, cancels, the janitor -----------------------------------------------------------

    async def _claims_once(self) -> None:
        """Look for cancels every tick; refresh the claims of running jobs every claim_refresh_seconds."""
        client = self._redis()
        last_refresh = 0.0
        while True:
            running = [d for d in self._running.values() if not d.task or not d.task.done()]
            if running:
                flags = await client.mget([self.keys.cancel(d.job_id) for d in running])
                for delivery, flag in zip(running, flags, strict=True):
                    if flag is not None:
                        self.local.cancel(delivery.job_id)
            if time.monotonic() - last_refresh >= self.timings.claim_refresh_seconds:
                last_refresh = time.monotonic()
                for delivery in running:
                    await client.xclaim(delivery.stream, GROUP, self.agent_id, min_idle_time=0,
                                        message_ids=[delivery.entry], justid=True)  # fmt: skip
            await asyncio.sleep(self.timings.tick_seconds)

    async def _janitor_once(self) -> None:
        client = self._redis()
        min_idle = int(self.timings.min_idle_seconds * 1000)
        for stream in self.streams:
            free = self.config.max_batch_lanes - self.busy_lanes
            if free <= 0:
                break
            try:
                _, claimed, deleted = await client.xautoclaim(
                    stream, GROUP, self.agent_id, min_idle_time=min_idle, start_id="0-0", count=free
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                continue
            for entry_id in deleted or []:
                log.debug("dropped a deleted entry %s from %s", entry_id, stream)
            for entry, fields in claimed:
                entry_text = entry.decode()
                if fields and fields[b"job"].decode() in self._running:
                    continue  # its own job, whose claim lapsed while Redis was away: it is still running
                count = await self._deliveries(stream, entry_text)
                log.warning("took over %s from %s (delivery %d)", entry_text, stream, count)
                if count > self.max_deliveries:
                    await self._dead_letter(stream, entry_text, fields, count - 1)
                else:
                    await self._take_safely(stream, entry_text, fields, attempt=count)
        await self._delete_idle_consumers(min_idle_ms=min_idle)
        await asyncio.sleep(max(0.2, self.timings.min_idle_seconds / 2))

    async def _delete_idle_consumers(self, *, min_idle_ms: int, only: str = "") -> int:
        """Delete the group's consumers of agents that are gone and left nothing pending; how many went.

        Every agent that ever took a job is a consumer until deleted: without this they pile up forever.
        """
        deleted = 0
        for stream in self.streams:
            try:
                deleted += int(
                    await self._redis().eval(  # type: ignore[misc]
                        _DELETE_IDLE_CONSUMERS, 1, stream, GROUP, min_idle_ms, self.keys.agent(""), only
                    )
                )
            except ResponseError as error:
                if "NOGROUP" not in str(error) and "no such key" not in str(error):
                    raise
        if deleted and not only:
            log.info("deleted %d consumer(s) of agents that are gone", deleted)
        return deleted

    async def _dead_letter(self, stream: str, entry: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        client = self._redis()
        if not fields:
            await client.xack(stream, GROUP, entry)
            return
        try:
            delivery = _read_entry(stream, entry, fields, deliveries)
        except (WireError, KeyError, UnicodeDecodeError) as error:
            await self._refuse_unreadable(stream, entry, fields, error)
            return
        job_id = delivery.job_id
        log.error(
            "job %s stopped a worker on each of its %d deliveries; dead-lettering it",
            job_id,
            deliveries,
            extra={"job_id": job_id},
        )
        await client.xadd(self.keys.dead, {**fields, "stream": stream, "deliveries": deliveries}, maxlen=10_000)  # type: ignore[dict-item]
        await self._answer(delivery, JobFailed(job_id, DEAD_LETTER_MESSAGE.format(count=deliveries)))
        self.dead_lettered += 1

    async def _refuse_unreadable(self, stream: str, entry: str, fields: dict[bytes, bytes], error: Exception) -> None:
        """Dead-letter at once an entry this agent can't read, answer its job as failed, and acknowledge it.

        Left pending, it would come back on every janitor pass and, read in a batch with real jobs,
        keep them from running: running it again can't help, so it is not retried.
        """
        client = self._redis()
        job_id = _text(fields.get(b"job"))
        bot_id = _text(fields.get(b"bot"))
        why = f"no field {error}" if isinstance(error, KeyError) else str(error)
        older = isinstance(error, UnknownWireType)
        advice = (
            "this agent is older than the bot that queued it; upgrade it"
            if older
            else "the bot that queued it runs another Stepgrid version; run the same version on both"
        )
        log.error(
            "job %s (entry %s in %s) can't be read here (%s): %s. Dead-lettered and answered as failed.",
            job_id or "?",
            entry,
            stream,
            why,
            advice,
            extra={"job_id": job_id} if job_id else {},
        )
        dead_fields: dict[bytes | str, bytes | str | int] = {**fields}  # type: ignore[dict-item]
        dead_fields.update(stream=stream, deliveries=1, reason=f"unreadable: {why}"[:500])
        await client.xadd(self.keys.dead, dead_fields, maxlen=10_000)  # type: ignore[arg-type]
        if job_id and bot_id:
            failure = JobFailed(job_id, UNREADABLE_JOB_MESSAGE if older else UNREADABLE_JOB_OTHER_VERSION_MESSAGE)
            await client.set(self.keys.result(job_id), dumps(failure), nx=True, ex=RESULT_TTL_SECONDS)
            await self._notify(_Delivery(job_id, stream, entry, bot_id, "", _UNREAD, 1), {"kind": "done"})
        async with client.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, entry)
            pipe.xdel(stream, entry)
            await pipe.execute()
        self.dead_lettered += 1

    # -- plumbing ------------------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        assert self._client is not None, "start() first"
        return self._client

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Call until Redis answers: an answer that is ready must not be lost to a Redis restart."""
        failures = 0
        while True:
            try:
                return await call()
            except (RedisError, OSError) as error:
                failures += 1
                if failures == 1:
                    log.warning("%s; retrying", redis_problem(self.url, error))
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))

    async def _forever(self, name: str, once: Callable[[], Awaitable[None]]) -> None:
        await keep_running(name, once, url=self.url, running=lambda: not self._stopping.is_set())


async def run_agent(agent: RedisAgent) -> int:
    """Run an agent until SIGTERM/SIGINT; returns 0, or 1 when its worker can't load any model."""
    import signal

    from inference.queues.base import WorkerUnavailable

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, agent._stopping.set)
    await agent.start()
    try:
        await agent.serve()
    except WorkerUnavailable as error:
        log.error("the GPU worker cannot start: %s", error)
        return 1
    finally:
        await agent.stop()
    return 0
