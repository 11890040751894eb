"""compose.yaml and its two-bot override (compose.bots.yaml) parse and wire what they must.

No `docker compose` here (no Docker on CI): the files are read as YAML and merged the way Compose
merges an override (services by name, maps key by key, other values replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for maps and plain values (what these files use)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in override.items()}}
    return override


def load(*names: str) -> dict[str, Any]:
    project: dict[str, Any] = {}
    for name in names:
        project = merged(project, yaml.safe_load((ROOT / name).read_text()))
    return project


def setting_names(project: dict[str, Any]) -> set[str]:
    return {name for service in project["services"].values() for name in service.get("environment", {})}


def test_compose_has_a_postgres_service_with_a_volume_and_a_health_check() -> None:
    postgres = load("compose.yaml")["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert postgres["environment"]["POSTGRES_PASSWORD"]


def test_the_two_bot_override_runs_two_bot_processes_with_their_own_ids_on_one_redis_and_postgres() -> None:
    project = load("compose.yaml", "compose.bots.yaml")
    bots = {
        name: service for name, service in project["services"].items() if service.get("command") == ["stepgrid", "run"]
    }
    assert sorted(bots) == ["bot", "bot-2"]
    ids = {service["environment"]["STEPGRID_BOT_ID"] for service in bots.values()}
    assert len(ids) == 2, "each bot process has its own id"
    data = set()
    for service in bots.values():
        env = service["environment"]
        assert env["STEPGRID_REDIS_URL"] == "redis://redis:6379/0"
        assert env["STEPGRID_DATABASE_URL"].startswith("postgresql://stepgrid:")
        assert env["STEPGRID_DATABASE_URL"].endswith("@postgres:5432/stepgrid")
        assert service["build"]["args"]["POSTGRES"] == "1", "the image with the PostgreSQL driver"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        [volume] = [volume for volume in service["volumes"] if volume.endswith(":/data")]
        data.add(volume.split(":")[0])
    assert len(data) == 2, "each bot process keeps its own data folder"
    assert data <= set(project["volumes"])


def test_every_stepgrid_variable_in_the_compose_files_is_a_setting() -> None:
    names = setting_names(load("compose.yaml", "compose.bots.yaml"))
    known = {f"STEPGRID_{field.upper()}" for field in Settings.model_fields}
    assert {name for name in names if name.startswith("STEPGRID_")} <= known
