"""What the bot and the GPU agents share in Redis: key names, the payload codec, the timings.

Keys (all under one prefix, so that several deployments or test cases can share a server):
  <p>:jobs:<model>      a stream per model; consumer group "agents"; fields job, bot, user, request
  <p>:result:<job>      the encoded JobResult/JobFailed, `SET NX EX 3600`: the first answer wins
  <p>:cancel:<job>      set by the bot to cancel a released job; agents check it while it runs
  <p>:released:<job>    the stream entry of a released job, so a restarted bot does not release it twice
  <p>:events:<bot>      a stream of started/progress/done notices for one bot (losing one is harmless)
  <p>:agent:<agent>     an agent's heartbeat hash, with a TTL: what `stepgrid workers` reads
  <p>:dead              the dead-letter stream: jobs that stopped a worker on every delivery
  <p>:bot:models        the model names the bot knows, so an agent can refuse one it does not
  <p>:fair:...          the fair order shared by every bot process (`inference.queues.shared_order`)
  <p>:bots              the ids of the bot processes that use this Redis (a set; `inference.queues.lease`)
  <p>:bot:<id>:lease    who holds a bot id now, with a TTL: a second live process with that id is refused,
                        and once it expires another process answers that bot's unfinished jobs
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

import inference.model_info
import inference.protocol
import inference.requests

log = logging.getLogger(__name__)

GROUP = "agents"
RESULT_TTL_SECONDS = 3600
MAX_DELIVERIES = 3
# Shown to the member when a job's worker died on every one of its deliveries.
DEAD_LETTER_MESSAGE = (
    "The GPU worker stopped {count} times while running this job, so it was not run again. "
    "Try fewer steps, a smaller size, or a different scheduler."
)

# Shown to the member when the agent that took a job can't read it (a rolling upgrade: the bot is newer).
UNREADABLE_JOB_MESSAGE = (
    "The GPU worker that took this job can't read it: it runs an older Stepgrid than the bot. "
    "The operator needs to upgrade that worker; then try again."
)
# The same when the entry is not even in this version's format (a bot older, or other, than the worker).
UNREADABLE_JOB_OTHER_VERSION_MESSAGE = (
    "The GPU worker that took this job can't read it: the bot and the worker run different Stepgrid "
    "versions. The operator needs to run the same version on both; then try again."
)
# Shown to the member when the bot can't read a worker's answer (the worker runs another version).
UNREADABLE_RESULT_MESSAGE = (
    "The GPU worker answered in a form this bot can't read: they run different Stepgrid versions. "
    "The operator needs to upgrade the older one; then try again."
)


# The bot id of a deployment with one bot process (and of every deployment before there could be several).
DEFAULT_BOT_ID = "stepgrid"
_BOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_bot_id(value: str) -> str:
    """Return `value` if it can name a bot process (letters, digits, `_.-`, at most 63); ValueError saying why."""
    if not _BOT_ID.fullmatch(value):
        raise ValueError(
            f"{value[:80]!r} can't name a bot process; use 1 to 63 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit), the same after every restart, e.g. bot-1"
        )
    return value


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

    @property
    def bots(self) -> str:
        return f"{self.prefix}:bots"

    def bot_lease(self, bot_id: str) -> str:
        return f"{self.prefix}:bot:{bot_id}:lease"


class WireError(ValueError):
    """Bytes in Redis that are not a wire value this version can read; the message says what they were."""


class UnknownWireType(WireError):
    """A wire type (or a field of one) this version does not have: the writer runs a newer Stepgrid."""


# Data only, never code: a JSON tree in which a tuple is an array, a wire dataclass is
# {"w": name, "f": {field: value}} and bytes are {"b": [offset, length]} into the blobs that follow
# the JSON, so that PNGs travel as they are. Decoding builds only the dataclasses of
# `inference.requests`, `inference.model_info` and `inference.protocol` (WorkerConfig excepted: it reads
# the registry), by calling them. A type is named by its class name alone, so moving one between these
# modules keeps the wire as it was.
_MAGIC = b"SGW1"
_HEADER = struct.Struct(">4sI")
_WIRE_MODULES = (inference.requests, inference.model_info, inference.protocol)
_WIRE_TYPES: dict[str, type] = {
    name: value
    for module in _WIRE_MODULES
    for name, value in vars(module).items()
    if isinstance(value, type)
    and dataclasses.is_dataclass(value)
    and value.__module__ == module.__name__
    and name != "WorkerConfig"
}


def _encode(value: object, blobs: list[bytes]) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        start = sum(map(len, blobs))
        blobs.append(value)
        return {"b": [start, len(value)]}
    if isinstance(value, tuple):
        return [_encode(item, blobs) for item in value]
    kind = type(value)
    if _WIRE_TYPES.get(kind.__name__) is kind:
        fields = {f.name: _encode(getattr(value, f.name), blobs) for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
        return {"w": kind.__name__, "f": fields}
    raise WireError(f"{kind.__module__}.{kind.__qualname__} is not a wire value")


def _decode(node: object, blobs: memoryview) -> object:
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return tuple(_decode(item, blobs) for item in node)
    if isinstance(node, dict) and set(node) == {"b"}:
        start, length = node["b"]
        if not (isinstance(start, int) and isinstance(length, int) and 0 <= start <= start + length <= len(blobs)):
            raise WireError("a bytes value points outside the payload")
        return bytes(blobs[start : start + length])
    if isinstance(node, dict) and set(node) == {"w", "f"} and isinstance(node["f"], dict):
        name = node["w"]
        kind = _WIRE_TYPES.get(name) if isinstance(name, str) else None
        if kind is None:
            raise UnknownWireType(f"an unknown wire type {str(name)[:60]!r}")
        known = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(node["f"]) - known)
        if unknown:
            raise UnknownWireType(f"a {name} with fields this version lacks ({', '.join(unknown)[:120]})")
        try:
            return kind(**{key: _decode(item, blobs) for key, item in node["f"].items()})
        except TypeError as error:  # a required field missing: written by another version
            raise WireError(f"a {name} this version can't build ({error})") from None
    raise WireError(f"not a wire value: {type(node).__name__}")


def dumps(value: object) -> bytes:
    """Encode a wire value (a Request, an event, a ModelInfo tuple) as data: JSON and raw bytes."""
    blobs: list[bytes] = []
    tree = json.dumps(_encode(value, blobs), separators=(",", ":"), allow_nan=True).encode()
    return b"".join([_HEADER.pack(_MAGIC, len(tree)), tree, *blobs])


def loads(data: bytes) -> object:
    """Decode what `dumps` wrote; raise WireError for anything else (old pickles included)."""
    if len(data) < _HEADER.size or data[:4] != _MAGIC:
        raise WireError("not a Stepgrid wire payload (written by a Stepgrid older than this one?)")
    _, length = _HEADER.unpack_from(data)
    if _HEADER.size + length > len(data):
        raise WireError("a truncated wire payload")
    try:
        tree = json.loads(data[_HEADER.size : _HEADER.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"a damaged wire payload ({error})") from None
    try:
        return _decode(tree, memoryview(data)[_HEADER.size + length :])
    except RecursionError:
        raise WireError("a wire payload nested too deep") from None


async def keep_running(
    name: str,
    once: Callable[[], Awaitable[None]],
    *,
    url: str,
    running: Callable[[], bool],
    on_redis_error: Callable[[Exception], None] | None = None,
    on_reachable_again: Callable[[], None] | None = None,
) -> None:
    """Run `once` again and again while `running()`: Redis errors (a restart, a network blip) are waited
    out with backoff and logged once per outage; any other error is logged with its traceback."""
    failures = 0
    while running():
        try:
            await once()
            if failures and on_reachable_again is not None:
                on_reachable_again()
            failures = 0
        except (RedisError, OSError) as error:
            failures += 1
            if on_redis_error is not None:
                on_redis_error(error)
            if failures == 1:
                log.warning("%s (the %s loop); retrying", redis_problem(url, error), name)
            await asyncio.sleep(min(2.0, 0.1 * 2**failures))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error in the Redis %s loop", name)
            await asyncio.sleep(1.0)
