"""A bounded load on loopback: many servers over four shards, slash commands at a steady rate, for a minute.

    python benchmarks/bench_load.py --out benchmarks/results/load-2500-servers-4-shards.json

The bot is the real one (`Stepgrid`, an AutoShardedBot, with its ledger and the local job queue) in a
process of its own; its GPU worker is the stand-in that sleeps per step (`benchmarks/sleepy_worker.py`):
the worker side is not what is measured. The fake Discord (tests/fake_discord.py) runs in this process,
holds the servers (each with a member), sends `/imagine` from them round robin at `--rate` per second on
the shard each belongs to, and records what the bot sends back.

Measured, for SQLite and PostgreSQL (tests/postgres_server.py starts one on loopback):
- time to acknowledge: from sending INTERACTION_CREATE to the bot's interaction callback (the defer),
  p50/p99/max; Discord drops an interaction not acknowledged within 3 s;
- nothing lost or doubled: every interaction acknowledged once and answered with its one picture
  (`refused`: answered in words instead, e.g. "the queue is full"; `lost`: not answered at all);
- the bot's event-loop lag: a 50 ms timer in the bot process, how late it woke, during the load;
- database write latency: each ledger write the bot awaited (its queue on the one writer task included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_discord import FakeDiscord, InteractionHandle

ACK_DEADLINE = 3.0  # seconds Discord gives a bot to acknowledge an interaction
LAG_TICK = 0.05


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def quantiles(values: list[float], scale: float = 1000.0) -> dict[str, float | int]:
    """count, p50, p99, max (milliseconds by default) of `values`."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered) * scale, 2),
        "p99": round(p99 * scale, 2),
        "max": round(ordered[-1] * scale, 2),
    }


# --- the bot's process --------------------------------------------------------------------------------


def bot_process(settings_values: dict[str, Any], out: str, step_seconds: float) -> None:
    """Spawn target: the bot on the fake Discord until SIGTERM; its lag and write samples go to `out`."""
    os.environ["STEPGRID_BENCH_STEP_SECONDS"] = str(step_seconds)
    asyncio.run(_serve(settings_values, Path(out)))


async def _serve(settings_values: dict[str, Any], out: Path) -> None:
    from benchmarks.sleepy_worker import sleepy_worker_main
    from bot.chat.client import Stepgrid, point_at_discord
    from bot.config import Settings
    from bot.storage.database import Database
    from bot.storage.lock import bot_lock
    from inference.queues.local import LocalJobQueue

    writes: list[tuple[float, float]] = []  # (when it ended, seconds)

    class TimedDatabase(Database):
        async def write(self, operation: Any) -> Any:
            started = time.monotonic()
            try:
                return await super().write(operation)
            finally:
                writes.append((time.monotonic(), time.monotonic() - started))

    lags: list[tuple[float, float]] = []

    async def watch_lag() -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            now = time.monotonic()
            lags.append((now, now - started - LAG_TICK))

    settings = Settings(_env_file=None, **settings_values)  # type: ignore[call-arg]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with bot_lock(settings, shards=settings.shards()):
        database = TimedDatabase(settings.database_path, settings, url=settings.database_url)
        await database.start()
        queue = LocalJobQueue(settings.worker_config(), worker_target=sleepy_worker_main)
        point_at_discord(settings)
        lag_watch = asyncio.create_task(watch_lag())
        try:
            bot = Stepgrid(settings, queue=queue, database=database, guild_ready_timeout=0.5)
            async with bot:
                token = settings.discord_token.get_secret_value() if settings.discord_token else ""
                runner = asyncio.create_task(bot.start(token))
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
                await bot.close()
                await runner
        finally:
            lag_watch.cancel()
            await database.close()
    await asyncio.to_thread(out.write_text, json.dumps({"lags": lags, "writes": writes}))


# --- this process: the fake Discord and the load --------------------------------------------------------


async def wait_ready(port: int, within: float) -> None:
    """Until the bot's /readyz says 200 (every shard connected, the worker ready)."""
    import aiohttp

    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)  # polling the bot's readiness with a deadline
    raise RuntimeError(f"the bot was not ready within {within:.0f}s")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_load(args: argparse.Namespace, database: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One run against one database: the figures."""
    fake = FakeDiscord(timeout=args.answer_timeout)
    fake.shard_count = args.shards
    members = []
    for number in range(args.guilds):
        guild = fake.add_guild(f"server {number}", fake.guild_id_on_shard(number % args.shards, args.shards))
        members.append((guild, guild.member(fake.new_id(), f"member-{number}")))
    await fake.start()
    port = free_port()
    settings = {
        "discord_token": fake.token,
        "discord_api_base": f"{fake.base_url}/api/v10",
        "discord_gateway_url": f"ws://127.0.0.1:{fake.port}/gateway",
        "shard_count": args.shards,
        "model": "tiny",
        "max_batch_lanes": args.lanes,
        "http_port": port,
        "database_path": str(folder / "stepgrid.sqlite3"),
        **database,
    }
    samples = folder / "bot-samples.json"
    process = multiprocessing.get_context("spawn").Process(
        target=bot_process, args=(settings, str(samples), args.step_seconds), name="stepgrid-bench-bot"
    )
    process.start()
    handles: list[tuple[float, InteractionHandle]] = []
    try:
        await wait_ready(port, within=args.answer_timeout)
        await fake.wait_for_shards(args.shards)
        total = int(args.rate * args.seconds)
        started = time.monotonic()
        sends: list[asyncio.Task[tuple[float, InteractionHandle]]] = []

        async def send(number: int) -> tuple[float, InteractionHandle]:
            guild, member = members[number % len(members)]
            sent = time.perf_counter()
            options = {"prompt": f"load {number}", "steps": args.steps, "size": "256"}
            return sent, await fake.invoke("imagine", options, guild=guild, user=member)

        for number in range(total):
            await asyncio.sleep(max(0.0, started + number / args.rate - time.monotonic()))  # the send schedule
            sends.append(asyncio.create_task(send(number)))
        handles = [await task for task in sends]
        load_end = time.monotonic()
        deadline = time.monotonic() + args.answer_timeout  # one deadline for all: the rest are counted below
        for _, handle in handles:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(AssertionError, TimeoutError):
                async with asyncio.timeout(remaining):
                    await handle.wait_for(lambda r: r.ok and bool(r.files))
    finally:
        if process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.join, 60)
        await fake.stop()
    acks, late, lost, refused, doubled = [], 0, 0, 0, 0
    unanswered: list[str] = []  # what the bot said instead of a picture, a few of them
    for sent, handle in handles:
        callbacks = [r for r in handle.requests if r.is_callback and r.ok]
        pictures = [r for r in handle.requests if r.ok and any(f.filename.startswith("stepgrid-") for f in r.files)]
        if callbacks:  # acknowledged, whatever came after
            ack = callbacks[0].at - sent
            acks.append(ack)
            late += int(ack > ACK_DEADLINE)
        doubled += int(len(callbacks) > 1 or len(pictures) > 1)
        if pictures:
            continue
        # No picture: refused in words the member sees (a private follow-up, e.g. the queue is full), or lost.
        said = [str(r.data.get("content") or r.data.get("embeds") or "") for r in handle.requests if r.ok]
        if callbacks and any(r.is_followup and r.ok and r.ephemeral for r in handle.requests):
            refused += 1
        else:
            lost += 1
        if len(unanswered) < 5:
            unanswered.append(" | ".join(text[:160] for text in said if text) or "nothing")
    bot = json.loads(samples.read_text()) if samples.exists() else {"lags": [], "writes": []}
    in_load = [lag for when, lag in bot["lags"] if started <= when <= load_end]
    writes = [seconds for when, seconds in bot["writes"] if started <= when <= load_end]
    unknown = [f"{r.method} {r.path}" for r in fake.unknown_requests]
    return {
        "interactions": len(handles),
        "acknowledged_within_3s": len(acks) - late,
        "late": late,
        "lost": lost,
        "refused": refused,
        "doubled": doubled,
        "unknown_routes": unknown,
        "unanswered_samples": unanswered,
        "seconds_of_load": round(load_end - started, 2),
        "ack_ms": quantiles(acks),
        "event_loop_lag_ms": quantiles(in_load),
        "database_write_ms": quantiles(writes),
    }


def _summary(name: str, figures: dict[str, Any]) -> str:
    ack, lag, write = figures["ack_ms"], figures["event_loop_lag_ms"], figures["database_write_ms"]
    return (
        f"{name}: {figures['interactions']} interactions in {figures['seconds_of_load']} s, "
        f"{figures['late']} late, {figures['lost']} lost, {figures['refused']} refused, {figures['doubled']} doubled; "
        f"ack p50 {ack.get('p50')} ms p99 {ack.get('p99')} ms max {ack.get('max')} ms; "
        f"loop lag p50 {lag.get('p50')} ms p99 {lag.get('p99')} ms max {lag.get('max')} ms; "
        f"db write p50 {write.get('p50')} ms p99 {write.get('p99')} ms ({write.get('count')} writes); "
        f"load average {figures['load_average_before'][0]} before, {figures['load_average_after'][0]} after"
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "note": args.note,
        "servers": args.guilds,
        "shards": args.shards,
        "rate_per_second": args.rate,
        "seconds": args.seconds,
        "steps_per_job": args.steps,
        "step_seconds": args.step_seconds,
        "max_batch_lanes": args.lanes,
        "runs": {},
    }
    for backend in args.databases:
        load_before = os.getloadavg()  # the machine's, not the bot's: other work on it shows here
        with tempfile.TemporaryDirectory(prefix=f"stepgrid-load-{backend}-") as folder:
            if backend == "sqlite":
                figures["runs"][backend] = await run_load(args, {}, Path(folder))
            else:
                from tests.postgres_server import PostgresServer

                server = PostgresServer()
                server.start()
                try:
                    url = server.create_database()
                    figures["runs"][backend] = await run_load(args, {"database_url": url}, Path(folder))
                finally:
                    server.stop()
        figures["runs"][backend]["load_average_before"] = [round(value, 2) for value in load_before]
        figures["runs"][backend]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
        print(_summary(backend, figures["runs"][backend]), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--guilds", type=int, default=2500, help="servers (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=4, help="shards, all in the bot's one process (%(default)s)")
    parser.add_argument("--rate", type=float, default=20.0, help="interactions per second (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="steps per /imagine (default: %(default)s)")
    parser.add_argument("--step-seconds", type=float, default=0.005, help="the stand-in's seconds per step")
    parser.add_argument(
        "--lanes", type=int, default=1, help="STEPGRID_MAX_BATCH_LANES: jobs sent to the worker at once (%(default)s)"
    )
    parser.add_argument("--databases", default="sqlite,postgresql", help="ledgers to run on (default: %(default)s)")
    parser.add_argument("--answer-timeout", type=float, default=180.0, help="how long to wait for any answer")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the saved figures")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    args.databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    figures = asyncio.run(bench(args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    failures = ("late", "lost", "refused", "doubled", "unknown_routes")
    return 0 if not any(run[name] for run in figures["runs"].values() for name in failures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
