"""The Docker image's HEALTHCHECK: `python -m bot.ops.healthcheck` asks the bot's own /healthz where the bot listens.

Standard library only, and nothing else of Stepgrid imported: Docker runs it every 30 seconds. Exit 0 on
a 2xx answer, 1 otherwise, with one line saying why, which `docker inspect` shows. It reads the
settings from the container's environment, as the bot does: STEPGRID_HTTP_PORT, STEPGRID_HTTP_BIND.

With the endpoint turned off (STEPGRID_HTTP_PORT empty) there is nothing to ask, and the check fails
saying so: Docker has no "unknown", and a "healthy" nobody checked would be trusted by whatever waits
on it (compose's `service_healthy`, an autoheal).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT = 5.0  # seconds; the image's HEALTHCHECK gives the whole command 10
# Where a bot bound to every address answers from inside its own container.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class Unhealthy(Exception):
    """The one line Docker keeps for a failed check."""


def healthz_url(environ: Mapping[str, str]) -> str:
    """The bot's /healthz as seen from inside its container; Unhealthy if the endpoint is off."""
    port = environ.get("STEPGRID_HTTP_PORT", "").strip()
    if not port:
        raise Unhealthy(
            "STEPGRID_HTTP_PORT is empty, so the bot serves no /healthz to ask: set it (the image sets 8080) "
            "or run the container with --no-healthcheck (compose: healthcheck: disable: true)."
        )
    if not port.isdigit():
        raise Unhealthy(f"STEPGRID_HTTP_PORT={port!r} is not a port number, so the bot refused to start.")
    host = environ.get("STEPGRID_HTTP_BIND", "").strip() or "127.0.0.1"
    host = LOOPBACK.get(host, host)
    if ":" in host:  # IPv6, in brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check(environ: Mapping[str, str]) -> str:
    """The healthy answer's body; Unhealthy with the reason otherwise."""
    url = healthz_url(environ)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return str(response.read().decode(errors="replace"))
    except urllib.error.HTTPError as error:  # the bot answered: its body says what is wrong
        raise Unhealthy(f"{url} answered {error.code}: {error.read().decode(errors='replace')}") from None
    except OSError as error:  # URLError too
        reason = getattr(error, "reason", error)
        raise Unhealthy(f"no answer from {url} ({reason}): the bot is not running, or still starting") from None


def main() -> int:
    try:
        print(check(os.environ))
    except Unhealthy as problem:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
