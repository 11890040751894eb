"""`stepgrid run` as a real subprocess against the fake Discord, its log lines watched as they come."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tests.fake_discord import FakeDiscord

WORKER_READY = "the GPU worker is ready"
STEPGRID = Path(sys.executable).with_name("stepgrid")
REPOSITORY = Path(__file__).resolve().parents[2]


class BotProcess:
    """`stepgrid run` in its own process group (with its worker), its log lines watched as they come."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        command = [str(STEPGRID), "run"] if STEPGRID.exists() else [sys.executable, "-m", "bot.cli.main", "run"]
        self.lines.clear()
        self.process = await asyncio.create_subprocess_exec(
            *command,
            env=self.env,
            cwd=self.log_path.parent,  # no stray .env from the repository
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: the worker dies with it
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with self.log_path.open("a") as log:
            while line := await self.process.stderr.readline():
                text = line.decode(errors="replace")
                log.write(text)
                async with self._changed:
                    self.lines.append(text)
                    self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_log(self, text: str, within: float) -> None:
        """Wait until the bot logs a line containing `text` (fails if it exits first or `within` s pass)."""
        async with self._changed, asyncio.timeout(within):
            await self._changed.wait_for(lambda: any(text in line for line in self.lines) or self._reader_done())
        if not any(text in line for line in self.lines):
            raise AssertionError(f"the bot exited before logging {text!r}; see {self.log_path}")

    def _reader_done(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def exited(self) -> int:
        """Wait for the bot to exit by itself (and its log to be read); its exit status."""
        assert self.process is not None
        status = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return status

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to the bot's whole process group and wait for the bot to exit."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        await self.process.wait()
        if self._reader is not None:
            await self._reader


def bot_env(fake: FakeDiscord, database: Path, model_cache_dir: Path) -> dict[str, str]:
    """`stepgrid run`'s environment: the fake Discord, the tiny model, one lane, this database."""
    return {
        **{name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")},
        "STEPGRID_DISCORD_TOKEN": fake.token,
        "STEPGRID_DISCORD_API_BASE": f"{fake.base_url}/api/v10",
        "STEPGRID_DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{fake.port}/gateway",
        "STEPGRID_DEV_GUILD_ID": str(fake.guild.id),
        "STEPGRID_MODEL": "tiny",
        "STEPGRID_MODEL_CACHE_DIR": str(model_cache_dir),
        "STEPGRID_DATABASE_PATH": str(database),
        "STEPGRID_MAX_BATCH_LANES": "1",  # the running job keeps the next one queued
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPOSITORY),
    }
