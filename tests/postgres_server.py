"""A real PostgreSQL server (Debian's package) on a free 127.0.0.1 port, for the tests: never a mock.

`initdb` makes a throwaway cluster in a temp folder and `postgres` serves it on loopback only (no
Unix socket), trusting local connections. PostgreSQL refuses to run as root: as root, the cluster
belongs to the `postgres` user Debian's package creates, and runs as it (`runuser`). Each test gets
a database of its own (`create_database`), so tests in parallel never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.redis_server import free_port

USER = "stepgrid"


def postgres_binaries() -> Path:
    """The folder of Debian's PostgreSQL server binaries (initdb, postgres), the newest installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    assert found, "PostgreSQL is not installed: apt-get install postgresql"
    return Path(found[-1]).parent


class PostgresServer:
    """One throwaway PostgreSQL cluster: `start()`, then `create_database()` per test, `stop()`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _as_server_user(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", "postgres", "--", *command]

    def start(self) -> None:
        binaries = postgres_binaries()
        # Not under pytest's tmp_path: that is root's, 0700, and the server runs as another user.
        self.directory = Path(tempfile.mkdtemp(prefix="stepgrid-postgres-"))
        data, log = self.directory / "data", self.directory / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            self._as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                                  "--no-sync", "--encoding=UTF8", "--locale=C"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # Durability off: a test cluster is thrown away, and fsyncs would cost every test seconds.
        self.process = subprocess.Popen(
            self._as_server_user([str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
                                  "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                                  "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                  "-c", "max_connections=200", "-c", f"log_directory={self.directory}"]),
            stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )  # fmt: skip
        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 1})
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    with engine.connect():
                        break
                except sa.exc.OperationalError:
                    assert self.process.poll() is None, log.read_text()[-2000:]
                    assert time.monotonic() < deadline, "postgres did not answer in 30 s"
                    time.sleep(0.05)  # polling a condition with a deadline
        finally:
            engine.dispose()

    def create_database(self) -> str:
        """A new, empty database of its own; returns its URL."""
        name = f"t{uuid.uuid4().hex[:16]}"
        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            # "Fast" shutdown (SIGINT): disconnects clients instead of waiting on them. Sent to the postmaster
            # itself, whose pid it writes in its data folder: `runuser` does not pass SIGINT on.
            assert self.directory is not None
            pid_file = self.directory / "data" / "postmaster.pid"
            if self.process.poll() is None and pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            else:
                self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
