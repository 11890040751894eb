"""The Docker image's HEALTHCHECK (`python -m bot.ops.healthcheck`): where it asks, and the one line it says."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys

import pytest

import bot.ops.http
from bot.ops.healthcheck import Unhealthy, healthz_url
from bot.storage.database import Database
from tests.bot.ops.test_http import endpoint_for
from tests.test_install import healthcheck_command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def image_healthcheck(**environment: str) -> tuple[int, str]:
    """The Dockerfile's HEALTHCHECK command, run as Docker runs it in a container with `environment`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}
    python, *arguments = healthcheck_command()
    assert python == "python"
    check = await asyncio.create_subprocess_exec(
        sys.executable, *arguments, env={**clean, **environment}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await check.communicate()  # the endpoint answers meanwhile: it runs on this event loop
    assert check.returncode is not None
    return check.returncode, output.decode().strip()


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])  # the image's default; published with -p
async def test_the_images_health_check_asks_the_running_endpoint_and_says_why_it_fails(
    database: Database, monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    port = free_port()
    environment = {"STEPGRID_HTTP_PORT": str(port), "STEPGRID_HTTP_BIND": bind}
    endpoint = endpoint_for(database, http_port=port, http_bind=bind)
    await endpoint.start()
    try:
        assert await image_healthcheck(**environment) == (0, '{"status": "ok", "database": "writable"}')

        monkeypatch.setattr(bot.ops.http, "HEALTH_WRITE_TIMEOUT", 0.5)
        other = sqlite3.connect(database.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the database: the bot answers 503
        try:
            status, line = await image_healthcheck(**environment)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert status == 1 and line.startswith("unhealthy: ") and "\n" not in line, line
        assert f"127.0.0.1:{port}/healthz answered 503" in line and "the database took no write" in line, line
    finally:
        await endpoint.close()
    status, line = await image_healthcheck(**environment)  # the bot is gone
    assert status == 1 and f"no answer from http://127.0.0.1:{port}/healthz" in line and "not running" in line, line


async def test_with_the_endpoint_turned_off_the_images_health_check_fails_saying_so() -> None:
    status, line = await image_healthcheck(STEPGRID_HTTP_PORT="")  # `-e STEPGRID_HTTP_PORT=`: no endpoint
    assert status == 1 and "\n" not in line, line
    assert line.startswith("unhealthy: STEPGRID_HTTP_PORT is empty") and "--no-healthcheck" in line, line


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("", "http://127.0.0.1:8080/healthz"),  # the default bind
        ("0.0.0.0", "http://127.0.0.1:8080/healthz"),  # every address: loopback among them
        ("::", "http://[::1]:8080/healthz"),
        ("10.1.2.3", "http://10.1.2.3:8080/healthz"),  # one address only, not loopback: asked there
        ("fd00::5", "http://[fd00::5]:8080/healthz"),
    ],
)
def test_the_images_health_check_asks_where_the_bot_listens(bind: str, url: str) -> None:
    assert healthz_url({"STEPGRID_HTTP_PORT": "8080", "STEPGRID_HTTP_BIND": bind}) == url


def test_a_port_that_is_not_a_number_is_named_in_one_line() -> None:
    with pytest.raises(Unhealthy, match=r"^STEPGRID_HTTP_PORT='http' is not a port number"):
        healthz_url({"STEPGRID_HTTP_PORT": "http"})
