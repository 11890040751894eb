"""Shared fixtures: the random-weight tiny model, a real spawned worker, a fake Discord."""

from __future__ import annotations

import os

# One intra-op thread per process: tests run several worker processes on a 2-core machine, and
# oversubscribed OpenMP threads spin-wait each other into 10-100x slowdowns. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.logs import FORMAT_VARIABLE, LEVEL_VARIABLE, JsonFormatter, TextFormatter
from inference.protocol import WorkerConfig
from tests.fake_discord import fake_discord  # noqa: F401  (a fixture)
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that spawn processes first, the end-to-end ones before all.

    pytest-xdist (`--dist loadfile --no-loadscope-reorder`, see scripts/test.sh) hands whole modules to
    the workers in this order: the long ones start at once instead of ending the run on one worker
    while the other idles. Within a module the order stays as written.
    """

    def weight(item: pytest.Item) -> int:
        if item.nodeid.startswith("tests/e2e/"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    module_weight: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_weight[module] = min(module_weight.get(module, 2), weight(item))
    items.sort(key=lambda item: module_weight[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True)
def _no_logging_left_behind() -> Iterator[None]:
    """An in-process CLI test calls `configure_logging`, which points the root logger at that test's
    (captured, later closed) stderr and sets STEPGRID_LOG_* for spawned workers: undo both, so that no
    later test in the same process logs into a closed stream or inherits a log format."""
    saved = {name: os.environ.get(name) for name in (LEVEL_VARIABLE, FORMAT_VARIABLE)}
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter | TextFormatter):
            root.removeHandler(handler)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per test session for the tiny model, built on first use by the worker."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_config(model_cache_dir: Path) -> WorkerConfig:
    return WorkerConfig(model="tiny", cache_dir=str(model_cache_dir), max_batch_lanes=8)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by key prefix (`fresh_keys`)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the session (each xdist worker its own); tests keep apart by database
    (`create_database`)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
