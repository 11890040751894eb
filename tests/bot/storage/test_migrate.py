"""Alembic owns the schema: upgrades from nothing, matches the models, round-trips, refuses the future."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.storage.database import Database
from bot.storage.migrate import (
    DatabaseTooNew,
    alembic_config,
    check_revision,
    database_revisions,
    migrations_folder,
    sqlite_url,
    upgrade_database,
)
from bot.storage.models import Base, JobRow

REPO = Path(__file__).resolve().parents[3]
TABLES = {"jobs", "guild_limits", "limits_changes", "command_syncs", "settle_points"}


def downgrade_database(path: Path | str, revision: str) -> None:
    """`alembic downgrade REVISION` on the database at `path`."""
    check_revision(path)
    command.downgrade(alembic_config(sqlite_url(path)), revision)


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows} - {"alembic_version"}


def schema_diff(path: Path) -> list[object]:
    engine = sa.create_engine(sqlite_url(path))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def make_newer(path: Path, revision: str = "ffffffffffff") -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_upgrade_creates_the_folder_and_every_table_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "stepgrid.sqlite3"

    upgrade_database(path)

    assert table_names(path) == TABLES
    assert database_revisions(path) == (head_revision(),)


def test_models_match_the_migrations(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)

    assert schema_diff(path) == []


def test_downgrade_to_base_then_upgrade_to_head_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)

    downgrade_database(path, "base")
    assert table_names(path) == set()
    assert database_revisions(path) == ()

    upgrade_database(path)
    assert table_names(path) == TABLES
    assert schema_diff(path) == []


def test_upgrade_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)
    upgrade_database(path)

    assert database_revisions(path) == (head_revision(),)


def test_there_is_one_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))

    assert len(scripts.get_heads()) == 1


def test_the_migrations_come_from_the_installed_package() -> None:
    folder = migrations_folder()

    assert (folder / "env.py").is_file()
    assert (folder / "script.py.mako").is_file()
    assert list((folder / "versions").glob("*.py"))


def test_a_database_from_a_newer_stepgrid_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)
    make_newer(path, "abc123future")

    with pytest.raises(DatabaseTooNew) as caught:
        upgrade_database(path)

    assert str(caught.value) == (
        "This database was written by a newer Stepgrid (revision abc123future); "
        "upgrade Stepgrid or point STEPGRID_DATABASE_PATH at another file."
    )
    assert database_revisions(path) == ("abc123future",)  # left untouched


async def test_the_bot_refuses_to_start_on_a_newer_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)
    make_newer(path)
    db = Database(path, Settings(_env_file=None))  # type: ignore[call-arg]

    with pytest.raises(DatabaseTooNew, match="newer Stepgrid"):
        await db.start()
    await db.close()


def test_env_py_migrates_through_an_async_url(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"

    command.upgrade(alembic_config(sqlite_url(path, driver="aiosqlite")), "head")

    assert table_names(path) == TABLES


async def test_env_py_migrates_a_connection_handed_over_by_run_sync(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    config = alembic_config(sqlite_url(path, driver="aiosqlite"))
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sqlite_url(path, driver="aiosqlite"))

    def upgrade(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)
    await engine.dispose()

    assert table_names(path) == TABLES


def test_the_alembic_cli_uses_alembic_ini(tmp_path: Path) -> None:
    path = tmp_path / "cli" / "db.sqlite3"

    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={sqlite_url(path)}", "upgrade", "head"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert table_names(path) == TABLES


def test_the_schema_comparison_does_see_a_difference(tmp_path: Path) -> None:
    # Guards the test above against passing vacuously.
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE jobs ADD COLUMN stray INTEGER")

    assert schema_diff(path) != []


def test_0003_models_keeps_old_jobs_and_limits_working(tmp_path: Path) -> None:
    # A database at 0001_initial with a job and a server's limits, from before models were recorded.
    path = tmp_path / "db.sqlite3"
    command.upgrade(alembic_config(sqlite_url(path)), "0001_initial")
    params = '{"prompt": "a fox", "steps": 20, "scheduler": "Euler a", "seed": 1}'
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO jobs (id, channel_id, user_id, command, params, scheduler, images, steps_requested, "
            "status, attempts, created_at) VALUES ('old', 5, 11, 'imagine', ?, 'Euler a', 1, 20, 'done', 1, "
            "'2026-03-14 12:00:00')",
            (params,),
        )
        connection.execute("INSERT INTO guild_limits (guild_id, max_steps) VALUES (1000, 40)")

    upgrade_database(path)

    assert schema_diff(path) == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT model FROM jobs WHERE id = 'old'").fetchone() == (None,)
        row = connection.execute(
            "SELECT max_steps, allowed_models, default_model, model_max_steps FROM guild_limits"
        ).fetchone()
    assert row == (40, None, None, None)
    engine = sa.create_engine(sqlite_url(path))
    try:
        with Session(engine) as session:
            job = session.get(JobRow, "old")
            assert job is not None and job.to_request().model == ""  # runs on the worker's default model
    finally:
        engine.dispose()


def test_0003_models_downgrades_to_0001(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    upgrade_database(path)
    downgrade_database(path, "0001_initial")
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
        limit_columns = {row[1] for row in connection.execute("PRAGMA table_info(guild_limits)")}
    assert "model" not in columns and not {"allowed_models", "default_model", "model_max_steps"} & limit_columns


def test_0007_image_limits_gives_old_jobs_their_kind_and_input_and_downgrades(tmp_path: Path) -> None:
    # A database at 0006 with jobs of every kind recorded before kinds were: their params say what they were.
    path = tmp_path / "db.sqlite3"
    command.upgrade(alembic_config(sqlite_url(path)), "0006_allowed_loras")
    image = '"image_sha256": "ab12", "image_bytes": 5000'
    rows = {
        "text": ("imagine", "imagine", '{"prompt": "a fox", "steps": 20}'),
        "img": ("imagine", "imagine", '{"prompt": "a fox", "steps": 20, ' + image + "}"),
        "vary": ("imagine", "vary-strong", '{"prompt": "a fox", "steps": 20, ' + image + "}"),
        "up": ("imagine", "upscale", '{"prompt": "a fox", "steps": 8, "hires": {"steps": 8}, ' + image + "}"),
        "grid": ("compare-steps", "compare-steps", '{"prompt": "a fox", "steps": [4, 8]}'),
    }
    with sqlite3.connect(path) as connection:
        for job_id, (command_, origin, params) in rows.items():
            connection.execute(
                "INSERT INTO jobs (id, channel_id, user_id, command, params, scheduler, images, steps_requested, "
                "status, attempts, created_at, origin) VALUES (?, 5, 11, ?, ?, 'Euler', 1, 20, 'done', 1, "
                "'2026-03-14 12:00:00', ?)",
                (job_id, command_, params, origin),
            )
        connection.execute("INSERT INTO guild_limits (guild_id, max_steps) VALUES (1000, 40)")

    upgrade_database(path)

    assert schema_diff(path) == []
    with sqlite3.connect(path) as connection:
        kinds = dict(connection.execute("SELECT id, kind FROM jobs").fetchall())
        inputs = connection.execute(
            "SELECT input_sha256, input_bytes, input_width FROM jobs WHERE id = 'up'"
        ).fetchone()
        limits = connection.execute(
            "SELECT max_steps, image_input, max_input_megapixels, max_upscale_size FROM guild_limits"
        ).fetchone()
    assert kinds == {"text": "text2img", "img": "img2img", "vary": "vary", "up": "upscale", "grid": "grid"}
    assert inputs == ("ab12", 5000, None)  # the params never held the image's width and height
    assert limits == (40, None, None, None)

    downgrade_database(path, "0006_allowed_loras")
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
        limit_columns = {row[1] for row in connection.execute("PRAGMA table_info(guild_limits)")}
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (5,)
    assert not {"kind", "input_sha256", "input_width", "input_height", "input_bytes"} & columns
    assert not {"image_input", "max_input_megapixels", "max_upscale_size"} & limit_columns


def test_settle_points_come_with_0009_and_go_with_its_downgrade(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    command.upgrade(alembic_config(sqlite_url(path)), "0008_postgres")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO jobs (id, channel_id, user_id, command, params, scheduler, images, steps_requested, "
            "status, attempts, created_at, origin) VALUES ('grid', 5, 11, 'compare-steps', '{}', 'Euler', 2, 15, "
            "'done', 1, '2026-03-14 12:00:00', 'compare-steps')"
        )
        connection.execute("INSERT INTO guild_limits (guild_id, max_steps) VALUES (1000, 40)")

    upgrade_database(path)
    assert schema_diff(path) == []
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO settle_points (job_id, row_index, guild_id, model, scheduler, width, height, ladder, "
            "settle_step, created_at) VALUES ('grid', 0, 1000, 'tiny', 'Euler', 256, 256, '[5, 10]', 5, "
            "'2026-03-14 12:00:00')"
        )
        assert connection.execute("SELECT max_steps, learned_steps FROM guild_limits").fetchone() == (40, None)

    downgrade_database(path, "0008_postgres")
    assert "settle_points" not in table_names(path)
    with sqlite3.connect(path) as connection:
        limit_columns = {row[1] for row in connection.execute("PRAGMA table_info(guild_limits)")}
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
    assert "learned_steps" not in limit_columns
