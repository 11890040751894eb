"""A RedisAgent in a process of its own, to be killed with -9.

Usage: python -m tests.inference.agent_process URL PREFIX NAME CACHE_DIR
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from inference.protocol import WorkerConfig
from inference.queues.agent import RedisAgent, run_agent
from inference.queues.wire import Keys
from tests.inference.redis_backends import FAST


def main() -> int:
    url, prefix, name, cache_dir = sys.argv[1:5]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level="INFO", format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    config = WorkerConfig(model="tiny", cache_dir=cache_dir, max_batch_lanes=8)
    return asyncio.run(run_agent(RedisAgent(url, config, agent_id=name, keys=Keys(prefix), timings=FAST)))


if __name__ == "__main__":
    raise SystemExit(main())
