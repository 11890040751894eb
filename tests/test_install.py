"""Reproducible installs: the lock files, .ci/run and the Dockerfile agree, and the image caches its dependencies.

No `docker build` runs here (no Docker Hub); these read the files the build and CI use.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("bot", "inference", "migrations")
CUDA_WHEELS = re.compile(r"^(nvidia-|cuda-|triton==)", re.M)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def locked(name: str) -> dict[str, str]:
    """A lock file's pins, {canonical name: version}, for Python 3.11 on Linux (what CI and the image run)."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        if not line or line[0] in " #":
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"python_full_version": "3.11.7"}):
            (specifier,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def torch_pins() -> dict[str, str]:
    found = {
        "Dockerfile": re.findall(r"torch==([\w.+]+)", (ROOT / "Dockerfile").read_text()),
        "scripts/test.sh": re.findall(r"torch==([\w.+]+)", (ROOT / "scripts/test.sh").read_text()),
        "scripts/try.sh": re.findall(r"torch==([\w.+]+)", (ROOT / "scripts/try.sh").read_text()),
        ".ci/lock": re.findall(r"^TORCH=([\w.+]+)", (ROOT / ".ci/lock").read_text(), re.M),
    }
    pins = {where: versions[0] for where, versions in found.items() if len(versions) == 1}
    assert pins.keys() == found.keys(), f"each must pin torch exactly once: {found}"
    for lock in ("requirements.lock", "requirements-dev.lock"):
        pins[lock] = locked(lock)["torch"]
    return pins


def test_the_image_installs_its_dependencies_in_a_layer_before_any_source_is_copied() -> None:
    instructions = dockerfile()
    install = next(
        i for i, (keyword, args) in enumerate(instructions) if keyword == "RUN" and "-r requirements.lock" in args
    )
    copies = [(i, args.split()[:-1]) for i, (keyword, args) in enumerate(instructions) if keyword == "COPY"]
    # the locks and nothing else
    assert [sources for i, sources in copies if i < install] == [["requirements.lock", "requirements-postgres.lock"]]
    copied_later = {source for i, sources in copies if i > install for source in sources}
    assert set(SOURCE_FOLDERS) <= copied_later
    installs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args]
    assert "torch==" in installs[0] and "--no-deps -r requirements.lock" in installs[0]
    assert installs[1:] == ["pip install --no-deps --no-build-isolation ."]  # the project alone: nothing downloaded
    assert "setuptools" in locked("requirements.lock")  # what that build runs on


def test_torch_is_pinned_to_the_same_release_in_ci_the_lock_and_the_image() -> None:
    pins = torch_pins()
    assert len(set(pins.values())) == 1, pins


def test_the_locks_hold_no_cuda_wheels_and_agree_with_each_other() -> None:
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    for name in ("requirements.lock", "requirements-dev.lock"):
        assert not CUDA_WHEELS.findall((ROOT / name).read_text()), f"{name} names a CUDA wheel"
    assert {name: dev.get(name) for name in runtime} == runtime


# The image's default lock is the runtime alone; its postgres lock adds the extra's driver (LGPL-3.0, kept out
# of the default image); CI tests both databases.
@pytest.mark.parametrize(
    ("locks", "extras"),
    [
        (("requirements.lock",), ()),
        (("requirements.lock", "requirements-postgres.lock"), ("postgres",)),
        (("requirements-dev.lock",), ("dev", "postgres")),
    ],
)
def test_every_declared_dependency_is_locked_at_a_version_it_allows(
    locks: tuple[str, ...], extras: tuple[str, ...]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(text) for text in project["optional-dependencies"][extra]]
    pins = {name: version for lock in locks for name, version in locked(lock).items()}
    lock = " + ".join(locks)
    stale = [
        str(requirement)
        for requirement in declared
        if not requirement.specifier.contains(pins.get(canonicalize_name(requirement.name), "0"), prereleases=True)
    ]
    assert not stale, f"{lock} is out of date with pyproject.toml (run .ci/lock): {stale}"


def test_every_package_the_code_imports_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(text).name) for text in project["dependencies"]}
    local = {*SOURCE_FOLDERS, "benchmarks", "tests"}
    imported: set[str] = set()
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - local
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not declared & {canonicalize_name(name) for name in distributions.get(module, [module])}
    }
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command line, as Docker runs it (exec form)."""
    (healthcheck,) = [args for keyword, args in dockerfile() if keyword == "HEALTHCHECK"]
    return list(json.loads(healthcheck.partition("CMD ")[2]))


def test_the_healthcheck_asks_the_http_endpoint_on_its_port_as_a_non_root_user() -> None:
    instructions = dockerfile()
    port = re.search(r"STEPGRID_HTTP_PORT=(\d+)", " ".join(args for keyword, args in instructions if keyword == "ENV"))
    assert port is not None  # the endpoint is on in the image, so its health check has something to ask
    command = healthcheck_command()
    assert command[:2] == ["python", "-m"] and "curl" not in command
    assert (ROOT / (command[2].replace(".", "/") + ".py")).is_file()  # a module of the copied source
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert [keyword for keyword, _ in instructions].index("USER") < [keyword for keyword, _ in instructions].index(
        "CMD"
    )


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_healthcheck_follows_the_port_the_operator_sets() -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]  # not the image's 8080: an --env-file set another
        try:
            env = {**os.environ, "STEPGRID_HTTP_PORT": str(port)}
            assert subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True).returncode == 0
        finally:
            server.shutdown()
    env = {**os.environ, "STEPGRID_HTTP_PORT": str(port)}  # nothing listens there now: unhealthy
    assert subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True).returncode != 0
