"""Every knob of Stepgrid in one place, read from environment variables or `.env`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.protocol import DEFAULT_SCHEDULER, MAX_COMPARE_CELLS, MAX_STEPS, GenerateRequest, WorkerConfig
from inference.redis_wire import check_redis_url
from inference.registry import models_from_setting


class Settings(BaseSettings):
    """Operator settings. Server admins can only tighten the ceilings below, never raise them."""

    model_config = SettingsConfigDict(env_prefix="STEPGRID_", env_file=".env", extra="ignore")

    discord_token: SecretStr | None = None
    dev_guild_id: int | None = Field(default=None, description="Sync commands to this guild only (instant).")
    # Where Discord is: only for a self-hosted proxy or tests (None: discord.com).
    discord_api_base: str | None = Field(default=None, description="REST base URL, e.g. http://127.0.0.1:8080/api/v10")
    discord_gateway_url: str | None = Field(default=None, description="Gateway URL, e.g. ws://127.0.0.1:8080/gateway")

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    device: str = "auto"
    dtype: str = "auto"
    model_cache_dir: Path | None = None
    max_batch_lanes: int = 8
    compile_unet: bool = False

    database_path: Path = Path("data/stepgrid.sqlite3")

    # Set: GPU agents (`stepgrid worker`) on any hosts behind this Redis do the work; unset: one local worker.
    redis_url: str | None = Field(default=None, description="e.g. redis://HOST:6379/0")

    queue_max_length: int = 100
    worker_hang_seconds: float = 120.0

    # Global ceilings (the operator's); per-server limits may only be tighter.
    max_steps: int = MAX_STEPS
    default_steps: int = GenerateRequest.steps
    default_scheduler: str = DEFAULT_SCHEDULER
    max_grid_cells: int = MAX_COMPARE_CELLS
    max_image_size: int = 1024  # the wire allows up to MAX_SIZE (2048) on one side; 1024 fits SDXL and FLUX
    max_compute_per_request: int = 1024 * 1024 * 600  # width x height x total steps
    daily_steps_per_user: int = 5000
    max_concurrent_jobs_per_user: int = 3

    @field_validator("model")
    @classmethod
    def _model_or_registry(cls, value: str) -> str:
        """One model, or a model registry (a .toml file or its text): a typo is named at start-up."""
        models_from_setting(value)  # RegistryError is a ValueError: pydantic reports its one line
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        """A malformed URL is named at start-up, not at the first job."""
        return check_redis_url(value) if value else None

    def worker_config(self) -> WorkerConfig:
        """The part of the settings a GPU worker needs."""
        return WorkerConfig(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            max_batch_lanes=self.max_batch_lanes,
            cache_dir=str(self.model_cache_dir) if self.model_cache_dir else None,
            compile=self.compile_unet,
        )
