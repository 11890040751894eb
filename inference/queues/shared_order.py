"""The fair order of every bot process's waiting jobs, kept in Redis so that it holds across processes.

Each bot process puts its accepted jobs here (`enqueue`); any of them releases from the head of one
shared round robin over members (`release`, one Lua script: atomic, so a job is released once), into
its model's stream while the agents have a free lane for it. Members take turns across all the
bot processes, not per process: a member with jobs on two processes still gets one turn a round.

Keys (under the deployment's prefix):
  <p>:fair:turns        members with waiting jobs, in the order they are served next (a list)
  <p>:fair:user:<user>  that member's waiting job ids, oldest first (a list)
  <p>:fair:job:<job>    a waiting job: model, lanes, bot, user, request (a hash; gone once released)
  <p>:fair:inflight     released jobs not answered yet: job -> "model lanes" (a hash); an entry goes
                        when its result exists (or its release marker expired)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from inference.queues.wire import Keys

_ENQUEUE = """
local p, job, user, model, lanes, bot, request = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', p..':result:'..job) == 1 then return 'answered' end
if redis.call('EXISTS', p..':released:'..job) == 1 then return 'released' end
local h = p..':fair:job:'..job
if redis.call('EXISTS', h) == 1 then
  redis.call('HSET', h, 'bot', bot)  -- queued again after a restart or a takeover: its notices go to this bot
  return 'queued'
end
redis.call('HSET', h, 'model', model, 'lanes', lanes, 'bot', bot, 'user', user, 'request', request)
redis.call('RPUSH', p..':fair:user:'..user, job)
if not redis.call('LPOS', p..':fair:turns', user) then redis.call('RPUSH', p..':fair:turns', user) end
return 'queued'
"""

_WITHDRAW = """
local p, job = ARGV[1], ARGV[2]
local h = p..':fair:job:'..job
local user = redis.call('HGET', h, 'user')
if not user then return 0 end
redis.call('DEL', h)
redis.call('LREM', p..':fair:user:'..user, 1, job)
if redis.call('LLEN', p..':fair:user:'..user) == 0 then redis.call('LREM', p..':fair:turns', 0, user) end
return 1
"""

# The same order as the in-process fair queue (inference.queues.base): round r takes the r-th waiting job
# of each member in turn order; a job starts when its model has room (a model with nothing in flight
# always does), a blocked model keeps its later jobs behind; a member who got a job goes to the back.
_RELEASE = """
local p = ARGV[1]
local capacity = cjson.decode(ARGV[2])
local inflight_key = p..':fair:inflight'
local busy = {}
local inflight = redis.call('HGETALL', inflight_key)
for i = 1, #inflight, 2 do
  local job, value = inflight[i], inflight[i + 1]
  if redis.call('EXISTS', p..':result:'..job) == 1 or redis.call('EXISTS', p..':released:'..job) == 0 then
    redis.call('HDEL', inflight_key, job)
  else
    local space = string.find(value, ' ')
    local model = string.sub(value, 1, space - 1)
    busy[model] = (busy[model] or 0) + tonumber(string.sub(value, space + 1))
  end
end
local turns_key = p..':fair:turns'
local users, lists = {}, {}
for _, user in ipairs(redis.call('LRANGE', turns_key, 0, -1)) do
  local jobs = redis.call('LRANGE', p..':fair:user:'..user, 0, -1)
  if #jobs == 0 then redis.call('LREM', turns_key, 0, user) else table.insert(users, user); lists[user] = jobs end
end
local order = {}
local round = 1
while true do
  local any = false
  for _, user in ipairs(users) do
    local job = lists[user][round]
    if job then table.insert(order, {user, job}); any = true end
  end
  if not any then break end
  round = round + 1
end
local released, waiting, blocked = {}, {}, {}
for _, pair in ipairs(order) do
  local user, job = pair[1], pair[2]
  local h = p..':fair:job:'..job
  local fields = redis.call('HMGET', h, 'model', 'lanes', 'bot', 'request')
  local model, lanes = fields[1], tonumber(fields[2])
  if not model then
    redis.call('LREM', p..':fair:user:'..user, 1, job)  -- withdrawn half-way: nothing left to release
  elseif blocked[model] or not capacity[model] then
    blocked[model] = true
    table.insert(waiting, job)
  elseif (busy[model] or 0) > 0 and (busy[model] or 0) + lanes > capacity[model] then
    blocked[model] = true
    table.insert(waiting, job)
  else
    local entry = redis.call('XADD', p..':jobs:'..model, '*', 'job', job, 'bot', fields[3], 'user', user,
                             'request', fields[4])
    redis.call('SET', p..':released:'..job, model..' '..entry, 'EX', 3600)
    redis.call('HSET', inflight_key, job, model..' '..lanes)
    redis.call('DEL', h)
    redis.call('LREM', p..':fair:user:'..user, 1, job)
    redis.call('LREM', turns_key, 0, user)
    if redis.call('LLEN', p..':fair:user:'..user) > 0 then redis.call('RPUSH', turns_key, user) end
    busy[model] = (busy[model] or 0) + lanes
    table.insert(released, job)
  end
end
return {released, waiting}
"""


@dataclass(frozen=True)
class Released:
    """What one release did: the jobs it put into streams, and every job still waiting, in the fair order."""

    released: tuple[str, ...]
    waiting: tuple[str, ...]


class SharedOrder:
    """The deployment's fair order in Redis, as one bot process uses it."""

    def __init__(self, client: aioredis.Redis, bot_id: str, keys: Keys) -> None:
        self.client = client
        self.bot_id = bot_id
        self.keys = keys

    async def enqueue(self, job_id: str, *, user_id: str, model: str, lanes: int, request: bytes) -> str:
        """Put a job in the order (again, after a restart or a takeover: it keeps its place). Returns
        "queued", "released" (it is in a stream already) or "answered" (its result is waiting)."""
        state = await self.client.eval(  # type: ignore[misc]
            _ENQUEUE, 0, self.keys.prefix, job_id, user_id, model, lanes, self.bot_id, request
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def withdraw(self, job_id: str) -> bool:
        """Take a waiting job out (a cancel); False if it was released already (or is unknown)."""
        return bool(await self.client.eval(_WITHDRAW, 0, self.keys.prefix, job_id))  # type: ignore[misc]

    async def release(self, capacity: dict[str, int]) -> Released:
        """Release what the agents have room for, from the head of the shared order."""
        released, waiting = await self.client.eval(  # type: ignore[misc]
            _RELEASE, 0, self.keys.prefix, json.dumps(capacity)
        )
        return Released(tuple(job.decode() for job in released), tuple(job.decode() for job in waiting))
