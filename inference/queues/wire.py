"""What the bot and the GPU agents share in Redis: key names, the payload codec, the timings.

Keys (all under one prefix, so that several deployments or test cases can share a server):
  <p>:jobs:<model>      a stream per model; consumer group "agents"; fields job, bot, user, request
  <p>:result:<job>      the pickled JobResult/JobFailed, `SET NX EX 3600`: the first answer wins
  <p>:cancel:<job>      set by the bot to cancel a released job; agents check it while it runs
  <p>:released:<job>    the stream entry of a released job, so a restarted bot does not release it twice
  <p>:events:<bot>      a stream of started/progress/done notices for one bot (losing one is harmless)
  <p>:agent:<agent>     an agent's heartbeat hash, with a TTL: what `stepgrid workers` reads
  <p>:dead              the dead-letter stream: jobs that stopped a worker on every delivery
  <p>:bot:models        the model names the bot knows, so an agent can refuse one it does not
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

import inference.protocol

GROUP = "agents"
RESULT_TTL_SECONDS = 3600
MAX_DELIVERIES = 3
# Shown to the member when a job's worker died on every one of its deliveries.
DEAD_LETTER_MESSAGE = (
    "The GPU worker stopped {count} times while running this job, so it was not run again. "
    "Try fewer steps, a smaller size, or a different scheduler."
)


class BadRedisUrl(ValueError):
    """A Redis URL that can't be right; the message names it and shows a good one."""


def check_redis_url(url: str) -> str:
    """Return `url` if it looks like redis://HOST[:PORT][/DB]; raise BadRedisUrl naming the problem."""
    example = "redis://HOST:6379/0"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise BadRedisUrl(f"{url!r} is not a Redis URL ({error}); use {example}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise BadRedisUrl(f"{url!r} is not a Redis URL (scheme {parts.scheme or 'missing'!r}); use {example}")
    if parts.scheme != "unix" and not parts.hostname:
        raise BadRedisUrl(f"{url!r} names no host; use {example}")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise BadRedisUrl(f"{url!r}: the database {database!r} is not a number; use {example}")
    del port
    return url


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url


def redis_problem(url: str, error: BaseException, *, fix_url: str = "STEPGRID_REDIS_URL") -> str:
    """What went wrong with Redis at `url` and what the operator can do, in one line.

    Redis that answers with an error (a password, a full memory, a replica) is not "unreachable":
    starting it again would not help, so each of those names its own fix.
    """
    where = f"Redis at {describe_url(url)}"
    detail = str(error) or type(error).__name__
    if isinstance(error, AuthenticationError | AuthenticationWrongNumberOfArgsError | NoPermissionError):
        return (
            f"{where} refused Stepgrid's login ({detail}); put the right user and password in {fix_url}: "
            "redis://USER:PASSWORD@HOST:6379/0"
        )
    if isinstance(error, OutOfMemoryError):
        return (
            f"{where} is out of memory ({detail}); raise its maxmemory "
            "(keep maxmemory-policy noeviction: evicting keys would lose jobs)"
        )
    if isinstance(error, ReadOnlyError):
        return f"{where} is a read-only replica ({detail}); point {fix_url} at the primary"
    if isinstance(error, BusyLoadingError):
        return f"{where} is loading its data after a restart ({detail}); it answers when that is done"
    if isinstance(error, ResponseError):
        return f"{where} refused a command ({detail}); see its log"
    return f"{where} is unreachable ({detail}); start it, or check {fix_url}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "stepgrid"

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{model}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def released(self, job_id: str) -> str:
        return f"{self.prefix}:released:{job_id}"

    def events(self, bot_id: str) -> str:
        return f"{self.prefix}:events:{bot_id}"

    def agent(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}"

    @property
    def agent_pattern(self) -> str:
        return f"{self.prefix}:agent:*"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def bot_models(self) -> str:
        return f"{self.prefix}:bot:models"


class _ProtocolUnpickler(pickle.Unpickler):
    """Unpickle only the wire types and the builtins they are made of: Redis data is not code."""

    _BUILTINS = frozenset({"tuple", "list", "dict", "frozenset", "set", "bytes", "str", "int", "float", "bool"})

    def find_class(self, module: str, name: str) -> object:
        if module == "inference.protocol" and not name.startswith("_"):
            return getattr(inference.protocol, name)
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def dumps(value: object) -> bytes:
    """Encode a wire value (a Request, an event, a ModelInfo tuple)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> object:
    """Decode what `dumps` wrote; anything but wire types is refused."""
    return _ProtocolUnpickler(io.BytesIO(data)).load()
