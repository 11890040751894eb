"""Every knob of Stepgrid in one place, read from environment variables or `.env`."""

from __future__ import annotations

import ctypes
import difflib
import functools
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.sharding import ShardRange, checked_shard_count, parse_shard_ids
from inference.clipping import echo
from inference.protocol import WorkerConfig
from inference.queues.wire import DEFAULT_BOT_ID, check_bot_id, check_redis_url
from inference.registry import ModelSpec, models_from_setting
from inference.requests import (
    DEFAULT_SCHEDULER,
    MAX_COMPARE_CELLS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_COMPARE_CELLS,
    MIN_SIZE,
    MIN_STEPS,
    SCHEDULER_NAMES,
    GenerateRequest,
)

DTYPES = ("auto", "float32", "float16", "bfloat16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
PREFIX = "STEPGRID_"
# Read by the tests and benchmarks, not by Settings.
# The most pixels a member's attached image may have, in millions: under the bomb guard of
# `bot.pictures.input_image` (4 × the wire's MAX_PIXELS = 9,437,184), so a server's cap speaks first.
MAX_INPUT_MEGAPIXELS = 9.4
MIN_INPUT_MEGAPIXELS = 0.1
NOT_SETTINGS = frozenset({"STEPGRID_TEST_LOAD_GATE", "STEPGRID_BENCH_STEP_SECONDS"})

log = logging.getLogger(__name__)


@functools.cache
def cuda_device_count() -> int:
    """How many CUDA devices the driver sees (0 without a driver), asked of libcuda without loading torch."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def checked_dtype(value: str) -> str:
    """`value` if it names a dtype the worker can load a model in; ValueError saying what is allowed."""
    dtype = value.strip().lower()
    if dtype not in DTYPES:
        raise ValueError(f"{echo(value)} is not a dtype; use one of {', '.join(DTYPES)}")
    return dtype


def checked_device(value: str) -> str:
    """`value` if it names a device this machine has; ValueError saying why not (no torch needed)."""
    device = value.strip().lower()
    if not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"{echo(value)} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        count = cuda_device_count()
        index = int(device.partition(":")[2] or 0)
        if count == 0:
            raise ValueError(f"{echo(value)} asks for a CUDA GPU, but this machine has none (no CUDA driver or device)")
        if index >= count:
            raise ValueError(f"{echo(value)}: this machine has {count} CUDA device(s), numbered from 0")
    return device


POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
POSTGRES_DRIVER = "postgresql+psycopg"  # psycopg 3: one driver for the async ledger and the sync migrations


def checked_database_url(value: str) -> str:
    """A PostgreSQL URL for SQLAlchemy's psycopg 3 driver (`postgres://` and `postgresql://` are taken as
    it); ValueError naming the problem (never the password) otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "use postgresql://USER:PASSWORD@HOST:5432/DATABASE (unset, the ledger is the SQLite file)"
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError(f"it is not a database URL; {example}") from None
    shown = url.render_as_string(hide_password=True)
    if url.drivername not in POSTGRES_SCHEMES:
        raise ValueError(f"{echo(shown)} is not a PostgreSQL URL; {example}")
    if not url.database:
        raise ValueError(f"{echo(shown)} names no database; {example}")
    return url.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)


def checked_bind(value: str) -> str:
    """`value` if it is an IP address (v4 or v6) or a host name this machine resolves; ValueError otherwise."""
    address = value.strip()
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ValueError(
            f"{echo(value)} is not an IP address or a host name this machine resolves; "
            "use 127.0.0.1 (this host only) or 0.0.0.0 (all)"
        ) from None
    return address


def checked_port(value: object) -> int | None:
    """A TCP port 1..65535, or None for empty/unset (the endpoint is off)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ValueError(
            f"{echo(value)} is not a port number; use 1 to 65535, or leave it empty to turn it off"
        ) from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port number; use 1 to 65535, or leave it empty to turn it off")
    return port


def checked_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` (any case) if it is one of `choices`; ValueError listing them otherwise."""
    found = next((choice for choice in choices if choice.casefold() == value.strip().casefold()), None)
    if found is None:
        raise ValueError(f"{echo(value)} is not a {what}; use one of {', '.join(choices)}")
    return found


def checked_scheduler(value: str) -> str:
    """The scheduler's proper name for any capitalisation; ValueError listing the schedulers if unknown."""
    wanted = value.strip().casefold()
    found = next((name for name in SCHEDULER_NAMES if name.casefold() == wanted), None)
    if found is None:
        raise ValueError(f"unknown scheduler {echo(value)}; use one of {', '.join(SCHEDULER_NAMES)}")
    return found


class Settings(BaseSettings):
    """Operator settings. Server admins can only tighten the ceilings below, never raise them."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=".env", extra="ignore")

    discord_token: SecretStr | None = None
    dev_guild_id: int | None = Field(default=None, description="Sync commands to this guild only (instant).")
    # Where Discord is: only for a self-hosted proxy or tests (None: discord.com).
    discord_api_base: str | None = Field(default=None, description="REST base URL, e.g. http://127.0.0.1:8080/api/v10")
    discord_gateway_url: str | None = Field(default=None, description="Gateway URL, e.g. ws://127.0.0.1:8080/gateway")

    # Sharding (docs/scaling.md): the total number of shards across all processes, and this process's ones
    # ("0-1", "0,2,4-7"; unset: all of them). Both unset: Discord's recommended count, all in this process.
    shard_count: int | None = None
    shard_ids: str | None = Field(default=None, description='e.g. "0-1" in one process, "2-3" in the other')

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    device: str = "auto"
    dtype: str = "auto"
    model_cache_dir: Path | None = None
    max_batch_lanes: int = Field(default=8, ge=1)
    compile_unet: bool = False

    database_path: Path = Path("data/stepgrid.sqlite3")
    # Set: the ledger lives on this PostgreSQL server (docs/scaling.md); unset: the SQLite file above.
    # Either way the data folder (database_path's folder) keeps accepted jobs' input images.
    database_url: str | None = Field(default=None, description="e.g. postgresql://stepgrid:PASSWORD@HOST:5432/stepgrid")
    # On PostgreSQL: the most connections this process opens (the server's max_connections must cover every
    # process's, and the tools'), and how long a read or write waits for one of them before the command is
    # refused with "the database is busy" (docs/scaling.md).
    database_pool_size: int = Field(default=20, ge=2, le=1000)
    database_pool_timeout: float = Field(default=60.0, gt=0, le=3600.0)

    # Set: GPU agents (`stepgrid worker`) on any hosts behind this Redis do the work; unset: one local worker.
    redis_url: str | None = Field(default=None, description="e.g. redis://HOST:6379/0")
    # This bot process's name on Redis and in the ledger (docs/scaling.md): each process of a deployment has its
    # own, the same after every restart (so that it finds its own jobs again), never two live at once.
    bot_id: str = DEFAULT_BOT_ID
    # How long a bot process that stopped answering keeps its id: after that another process answers its jobs.
    bot_lease_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)

    queue_max_length: int = Field(default=100, ge=1)
    worker_hang_seconds: float = Field(default=120.0, gt=0)
    # On SIGTERM (a deploy): how long running jobs may go on to finish; the rest run at the next start.
    # Under the time the process manager waits before SIGKILL (Docker's default: 10 s).
    shutdown_grace_seconds: float = Field(default=8.0, ge=0, le=3600)

    # The operator's HTTP endpoint (health, metrics, status page): off unless a port is set.
    http_port: int | None = None
    http_bind: str = "127.0.0.1"
    status_show_prompts: bool = False  # the status page shows what every server asked for

    # The image checker every picture goes through in the worker (docs/safety.md): "auto" (the default
    # NSFW classifier, none for random-weight test models), "none", "diffusers[:SOURCE]", or an image
    # classifier's hub id or folder. A picture scoring at least the threshold is flagged.
    safety_checker: str = "auto"
    safety_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Whether a server may post flagged pictures outside age-restricted channels (`/limits-set`).
    safety_allow_everywhere: bool = False

    log_level: str = "INFO"
    log_format: str = "text"

    # Global ceilings (the operator's); per-server limits may only be tighter.
    # Bounded by what the wire takes: a ceiling above it would be promised by /limits show and refused by the worker.
    max_steps: int = Field(default=MAX_STEPS, ge=MIN_STEPS, le=MAX_STEPS)
    default_steps: int = Field(default=GenerateRequest.steps, ge=MIN_STEPS, le=MAX_STEPS)
    default_scheduler: str = DEFAULT_SCHEDULER
    max_grid_cells: int = Field(default=MAX_COMPARE_CELLS, ge=MIN_COMPARE_CELLS, le=MAX_COMPARE_CELLS)
    # The wire allows up to MAX_SIZE (2048) on one side; 1024 fits SDXL and FLUX.
    max_image_size: int = Field(default=1024, ge=MIN_SIZE, le=MAX_SIZE)
    max_compute_per_request: int = Field(default=1024 * 1024 * 600, ge=1)  # width x height x total steps
    daily_steps_per_user: int = Field(default=5000, ge=1)
    max_concurrent_jobs_per_user: int = Field(default=3, ge=1)
    # Images members attach to start from (img2img): whether they may, and how many pixels one may have.
    image_input: bool = True
    max_input_megapixels: float = Field(default=MAX_INPUT_MEGAPIXELS, ge=MIN_INPUT_MEGAPIXELS, le=MAX_INPUT_MEGAPIXELS)
    # The largest side of an Upscale ×2 result; unset: the max image size.
    max_upscale_size: int | None = Field(default=None, ge=MIN_SIZE, le=MAX_SIZE)
    # /imagine without steps runs where a server's grids settle (docs/steps.md): the default for servers that
    # haven't chosen (`/limits-set learned_steps`), and how many grids of a model × scheduler it takes first.
    learned_steps: bool = False
    learned_steps_min_grids: int = Field(default=3, ge=1, le=1000)

    # Checked when read, before any model loads: a typo is one line at start, not worker tracebacks later.
    _dtype = field_validator("dtype")(classmethod(lambda cls, value: checked_dtype(value)))
    _device = field_validator("device")(classmethod(lambda cls, value: checked_device(value)))
    _scheduler = field_validator("default_scheduler")(classmethod(lambda cls, value: checked_scheduler(value)))
    _bind = field_validator("http_bind")(classmethod(lambda cls, value: checked_bind(value)))
    _port = field_validator("http_port", mode="before")(classmethod(lambda cls, value: checked_port(value)))
    _log_level = field_validator("log_level")(
        classmethod(lambda cls, value: checked_choice(value, LOG_LEVELS, "log level"))
    )
    _log_format = field_validator("log_format")(
        classmethod(lambda cls, value: checked_choice(value, LOG_FORMATS, "log format"))
    )

    @field_validator("safety_checker")
    @classmethod
    def _checker(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty; use auto, none, diffusers, or an image classifier's hub id or folder")
        return value.strip()

    @field_validator("model")
    @classmethod
    def _model_or_registry(cls, value: str) -> str:
        """One model, or a model registry (a .toml file or its text): a typo is named at start-up."""
        models_from_setting(value)  # RegistryError is a ValueError: pydantic reports its one line
        return value

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """The operator's models (the registry, or the one model), the default first."""
        return _specs(self.model)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """A malformed URL is named at start-up, not at the first job."""
        return check_redis_url(value) if value else None

    _bot_id = field_validator("bot_id")(classmethod(lambda cls, value: check_bot_id(value)))

    @field_validator("shard_count")
    @classmethod
    def _shard_count(cls, value: int | None) -> int | None:
        return checked_shard_count(value)

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A range that names no shard of the count, or runs without a count, is named at start-up."""
        if value is None or not value.strip():
            return None
        if "shard_count" not in info.data:  # the count itself was invalid: that is the line to show
            return value
        parse_shard_ids(value, info.data["shard_count"])
        return value.strip()

    def shards(self) -> ShardRange | None:
        """This process's shards, or None: Discord chooses the count and this process runs them all."""
        if self.shard_count is None:
            return None
        ids = parse_shard_ids(self.shard_ids, self.shard_count) if self.shard_ids else range(self.shard_count)
        return ShardRange(self.shard_count, tuple(ids))

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        """A URL that isn't PostgreSQL's is named at start-up, not at the first write."""
        return checked_database_url(value) if value and value.strip() else None

    def worker_config(self) -> WorkerConfig:
        """The part of the settings a GPU worker needs."""
        return WorkerConfig(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            max_batch_lanes=self.max_batch_lanes,
            cache_dir=str(self.model_cache_dir) if self.model_cache_dir else None,
            compile=self.compile_unet,
            safety_checker=self.safety_checker,
            safety_threshold=self.safety_threshold,
        )


@functools.lru_cache(maxsize=8)
def _specs(value: str) -> tuple[ModelSpec, ...]:
    # Read once per value: the worker loaded the registry once too, so they agree.
    return models_from_setting(value)


def unknown_settings(environ: Mapping[str, str], env_file: Path | None = Path(".env")) -> list[str]:
    """A line for each STEPGRID_ variable (in the environment or `env_file`) that no setting reads: a typo
    there would otherwise be ignored in silence and the default used."""
    names = set(environ) | (set(dotenv_values(env_file)) if env_file is not None and env_file.is_file() else set())
    known = [field.upper() for field in Settings.model_fields]
    lines = []
    for name in sorted(names):
        field = name.upper().removeprefix(PREFIX)
        if not name.upper().startswith(PREFIX) or field in known or name in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(field, known, n=1)  # without the prefix, which every name shares
        fix = f"did you mean {PREFIX}{close[0]}?" if close else "see .env.example for the settings"
        lines.append(f"{name} is not a Stepgrid setting and is ignored; {fix}")
    return lines


def warn_unknown_settings() -> None:
    """Log unknown_settings() of this process, once logging is set up."""
    for line in unknown_settings(os.environ):
        log.warning(line)
