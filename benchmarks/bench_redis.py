"""Benchmark the Redis distribution layer alone: agents whose "GPU" sleeps a fixed time per step.

    python benchmarks/bench_redis.py --out benchmarks/results/redis-distribution.json

Throughput with 1, 2, 4 and 8 one-lane agents behind one redis-server, as a ratio to one agent
(the target is at least 0.9 x N), and the latency a job gains going through Redis instead of the
local pipe (one job at a time, median). The agents run in this process, each with its own spawned
stand-in worker (`benchmarks/sleepy_worker.py`); the redis-server is Debian's, on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sleepy_worker import sleepy_worker_main
from inference.protocol import JobResult, WorkerConfig
from inference.queues.agent import AgentTimings, RedisAgent
from inference.queues.local import LocalJobQueue
from inference.queues.redis import RedisJobQueue
from inference.queues.wire import Keys
from inference.requests import GenerateRequest
from tests.redis_server import RedisServer

CONFIG = WorkerConfig(model="tiny", max_batch_lanes=1, warmup=False)
TIMINGS = AgentTimings(heartbeat_seconds=1.0, claim_refresh_seconds=2.0, min_idle_seconds=30.0, tick_seconds=0.2)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def run_jobs(queue: LocalJobQueue, count: int, steps: int) -> float:
    """Submit `count` jobs from `count` members at once; seconds until the last is answered."""
    started = time.perf_counter()
    ids = [queue.submit(GenerateRequest(f"job {i}", steps=steps, width=256, height=256), user_id=f"u{i}")
           for i in range(count)]  # fmt: skip

    async def answer(job_id: str) -> None:
        async for event in queue.events(job_id):
            if isinstance(event, JobResult):
                return
        raise RuntimeError(f"job {job_id} failed")

    await asyncio.gather(*(answer(job_id) for job_id in ids))
    return time.perf_counter() - started


async def with_agents(url: str, agents: int, work: Any) -> Any:
    keys = Keys(f"bench{agents}-{os.getpid()}")
    fleet = [RedisAgent(url, CONFIG, agent_id=f"agent-{i}", keys=keys, timings=TIMINGS,
                        worker_target=sleepy_worker_main) for i in range(agents)]  # fmt: skip
    for agent in fleet:
        await agent.start()
    serving = [asyncio.create_task(agent.serve()) for agent in fleet]
    bot = RedisJobQueue(CONFIG, url, max_length=10_000, keys=keys, poll_seconds=0.5)
    await bot.start()
    try:
        await bot.wait_ready()
        while sum(agent.state == "ready" for agent in bot.agents) < agents:  # noqa: ASYNC110  (polls Redis)
            await asyncio.sleep(0.05)  # every agent heartbeating before the clock starts
        await run_jobs(bot, agents, 2)  # warm-up: every agent has taken one job
        return await work(bot)
    finally:
        await bot.close()
        for agent in fleet:
            await agent.stop()
        for task in serving:
            task.cancel()


async def latency(queue: LocalJobQueue, jobs: int, steps: int) -> float:
    """Median seconds from submit to result of one job at a time."""
    times = [await run_jobs(queue, 1, steps) for _ in range(jobs)]
    return statistics.median(times)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["STEPGRID_BENCH_STEP_SECONDS"] = str(args.step_seconds)
    gpu_seconds_per_job = args.steps * args.step_seconds
    figures: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "step_seconds": args.step_seconds,
        "steps_per_job": args.steps,
        "jobs_per_agent": args.jobs_per_agent,
        "agents": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        server.start()
        try:
            rates: dict[int, float] = {}
            for agents in args.agents:
                jobs = agents * args.jobs_per_agent

                async def measure(bot: RedisJobQueue, jobs: int = jobs) -> float:
                    return await run_jobs(bot, jobs, args.steps)

                seconds = await with_agents(server.url, agents, measure)
                rates[agents] = jobs / seconds
                ideal = agents / gpu_seconds_per_job
                figures["agents"][str(agents)] = {
                    "jobs": jobs,
                    "seconds": round(seconds, 3),
                    "jobs_per_second": round(rates[agents], 3),
                    "ratio_to_one": round(rates[agents] / rates[args.agents[0]] * args.agents[0], 3),
                    "efficiency_vs_ideal": round(rates[agents] / ideal, 3),
                }
                print(f"{agents} agent(s): {jobs} jobs in {seconds:.2f}s, {rates[agents]:.2f} jobs/s, "
                      f"x{figures['agents'][str(agents)]['ratio_to_one']:.2f} of one agent", flush=True)  # fmt: skip

            async def redis_latency(bot: RedisJobQueue) -> float:
                return await latency(bot, args.latency_jobs, args.steps)

            via_redis = await with_agents(server.url, 1, redis_latency)
        finally:
            server.stop()
    local = LocalJobQueue(CONFIG, worker_target=sleepy_worker_main)
    await local.start()
    try:
        await local.wait_ready()
        await run_jobs(local, 1, 2)
        via_pipe = await latency(local, args.latency_jobs, args.steps)
    finally:
        await local.close()
    figures["latency"] = {
        "gpu_seconds_per_job": gpu_seconds_per_job,
        "local_pipe_median_seconds": round(via_pipe, 4),
        "redis_median_seconds": round(via_redis, 4),
        "redis_added_ms": round((via_redis - via_pipe) * 1000, 1),
    }
    print(f"latency per job: local pipe {via_pipe * 1000:.0f} ms, Redis {via_redis * 1000:.0f} ms "
          f"(+{(via_redis - via_pipe) * 1000:.0f} ms); GPU time {gpu_seconds_per_job * 1000:.0f} ms")  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", default="1,2,4,8", help="agent counts, comma-separated (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="steps per job (default: %(default)s)")
    parser.add_argument("--step-seconds", type=float, default=0.02, help="GPU time per step (default: %(default)s)")
    parser.add_argument("--jobs-per-agent", type=int, default=8, help="jobs per agent (default: %(default)s)")
    parser.add_argument(
        "--latency-jobs", type=int, default=15, help="jobs for the latency median (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    args.agents = [int(n) for n in args.agents.split(",")]
    figures = asyncio.run(bench(args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
