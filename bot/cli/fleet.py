"""`stepgrid worker` (a GPU agent behind Redis) and `stepgrid workers` (the live agents)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from typing import Any, TextIO

import redis.asyncio as aioredis

from bot.config import Settings, checked_device, checked_dtype, warn_unknown_settings
from inference.logs import configure_logging, report_fatal
from inference.queues.agent import AgentTimings, RedisAgent, run_agent
from inference.queues.redis import AgentInfo, RedisUnreachable, ping, read_agents
from inference.queues.wire import BadRedisUrl, Keys, check_redis_url, describe_url
from inference.registry import RegistryError, models_from_setting


class FleetError(Exception):
    """A bad argument or an unreachable Redis: one line for the operator, exit 2."""


def add_fleet_commands(commands: argparse._SubParsersAction[Any], settings: Settings) -> None:
    """Add `worker` and `workers` to the `stepgrid` parser."""
    about = "run a GPU agent that takes jobs from the bot through Redis (one per GPU, on any host)"
    worker = commands.add_parser("worker", help=about, description=about[0].upper() + about[1:] + ".")
    worker.add_argument("--redis", default=settings.redis_url, help="redis://HOST:6379/0 (default: STEPGRID_REDIS_URL)")
    models_help = "the models to serve: one model, or a registry .toml like the bot's (default: STEPGRID_MODEL)"
    worker.add_argument("--models", default=settings.model, help=models_help)
    worker.add_argument("--device", default=settings.device, help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    worker.add_argument(
        "--dtype", default=settings.dtype, help="auto, float32, float16, bfloat16 (default: %(default)s)"
    )
    worker.add_argument(
        "--lanes", type=int, default=settings.max_batch_lanes, help="batch lanes (default: %(default)s)"
    )
    worker.add_argument(
        "--name", default=None, help="agent name shown by `stepgrid workers` (default: host-pid-random)"
    )
    worker.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds between heartbeats (default: %(default)s)"
    )
    worker.add_argument(
        "--reclaim-after",
        type=float,
        default=60.0,
        help="seconds without a claim refresh after which another agent takes a job over (default: %(default)s)",
    )
    workers = commands.add_parser("workers", help="list the live GPU agents behind Redis")
    workers.add_argument(
        "--redis", default=settings.redis_url, help="redis://HOST:6379/0 (default: STEPGRID_REDIS_URL)"
    )


def _redis_url(value: str | None) -> str:
    if not value:
        raise FleetError("no Redis: pass --redis redis://HOST:6379/0 or set STEPGRID_REDIS_URL")
    try:
        check_redis_url(value)
    except BadRedisUrl as error:
        raise FleetError(str(error)) from None
    try:
        asyncio.run(ping(value))
    except RedisUnreachable as error:
        raise FleetError(str(error)) from None
    return value


async def _bot_models(url: str, keys: Keys) -> list[str]:
    client = aioredis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        known = await client.get(keys.bot_models)
    finally:
        await client.aclose()
    return [name for name in known.decode().split(",") if name] if known else []


def worker_command(args: argparse.Namespace, settings: Settings) -> int:
    """`stepgrid worker`: check everything that can be checked at once, then serve until stopped."""
    try:
        url = _redis_url(args.redis)
        try:
            names = [spec.name for spec in models_from_setting(args.models)]
        except RegistryError as error:
            raise FleetError(str(error)) from None
        if args.lanes < 1:
            raise FleetError(f"--lanes {args.lanes}: give at least 1")
        for option, value in (("--heartbeat", args.heartbeat), ("--reclaim-after", args.reclaim_after)):
            if not value > 0:
                raise FleetError(f"{option} {value:g}: give a number of seconds above 0")
        try:
            args.device, args.dtype = checked_device(args.device), checked_dtype(args.dtype)
        except ValueError as error:  # or the worker would crash three times over it, with tracebacks
            raise FleetError(f"--device/--dtype: {error}") from None
        keys = Keys()
        known = asyncio.run(_bot_models(url, keys))
        unknown = [name for name in names if known and name not in known]
        if unknown:
            raise FleetError(
                f"the bot does not know the model {unknown[0]!r} (it knows: {', '.join(known)}); "
                "add it to the bot's STEPGRID_MODEL registry or start this worker with one of those"
            )
    except FleetError as error:
        report_fatal("agent", "stepgrid worker", str(error), log_format=settings.log_format)
        return 2
    configure_logging("agent", level=settings.log_level, log_format=settings.log_format)
    warn_unknown_settings()
    config = dataclasses.replace(
        settings.worker_config(), model=args.models, device=args.device, dtype=args.dtype, max_batch_lanes=args.lanes
    )
    timings = AgentTimings(
        heartbeat_seconds=args.heartbeat,
        claim_refresh_seconds=min(args.heartbeat, args.reclaim_after / 3),
        min_idle_seconds=args.reclaim_after,
        tick_seconds=min(0.5, args.heartbeat),
    )
    agent = RedisAgent(url, config, agent_id=args.name, keys=keys, timings=timings,
                       hang_seconds=settings.worker_hang_seconds)  # fmt: skip
    return asyncio.run(run_agent(agent))


def format_agents(agents: list[AgentInfo], now: float, out: TextIO) -> None:
    """One line per agent: name, host, device, state, models, lanes, jobs done, last heartbeat."""
    header = ("AGENT", "HOST", "DEVICE", "STATE", "MODELS", "BUSY/FREE", "DONE", "HEARTBEAT")
    rows = [
        (
            agent.agent_id,
            agent.host,
            agent.device,
            agent.state,
            ",".join(agent.model_names),
            f"{agent.busy_lanes}/{max(0, agent.lanes - agent.busy_lanes)}",
            str(agent.jobs_done),
            f"{max(0.0, now - agent.heartbeat_at):.0f}s ago",
        )
        for agent in agents
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def workers_command(args: argparse.Namespace) -> int:
    """`stepgrid workers`: print the live agents; exit 2 when Redis can't be reached."""
    try:
        url = _redis_url(args.redis)
    except FleetError as error:
        print(f"stepgrid workers: {error}", file=sys.stderr)
        return 2

    async def read() -> list[AgentInfo]:
        client = aioredis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            return await read_agents(client, Keys())
        finally:
            await client.aclose()

    agents = asyncio.run(read())
    if not agents:
        where = describe_url(url)
        print(f"no live GPU agents behind {where}; start one with `stepgrid worker --redis {where}`")
        return 0
    format_agents(agents, time.time(), sys.stdout)
    return 0


def check_bot_redis(settings: Settings) -> str | None:
    """Before `stepgrid run` with STEPGRID_REDIS_URL: why Redis can't be used, or None."""
    if not settings.redis_url:
        return None
    try:
        _redis_url(settings.redis_url)
    except FleetError as error:
        return str(error)
    return None
