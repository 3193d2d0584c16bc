"""A real PostgreSQL server for tests: Debian's binaries in a temporary folder, on 127.0.0.1.

    with PostgresServer() as pg:        # initdb + start; stopped and removed on exit
        url = pg.create_database("t1")  # postgresql+asyncpg://townsquare@127.0.0.1:PORT/t1
        pg.stop(); pg.start()           # the same data, port and URLs: an outage and a recovery

`initdb` refuses to run as root, so as root the folder is handed to Debian's `postgres` user and
the server binaries run through `runuser -u postgres --`. Durability is switched off (fsync,
synchronous_commit): a test server only has to be fast. Any test folder can use the
`postgres_server` fixture by importing it into its conftest.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.procs import free_port

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install Debian's `postgresql` package (`./dev test` does)"


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql."""
    found = [p.parent for p in PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    if not found:
        raise PostgresNotInstalled(
            f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/*/bin: {INSTALL_HINT}"
        )

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))

    return max(found, key=version)


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:`port`."""

    def __init__(self, *, user: str = "townsquare", database: str = "townsquare") -> None:
        self.bindir = find_bindir()
        self.user = user
        self.database = database
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres and shutil.which("runuser") is None:
            raise PostgresNotInstalled("running as root needs `runuser` to drop to `postgres`")
        self.root = Path(tempfile.mkdtemp(prefix="townsquare-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self._as_postgres:
            try:
                shutil.chown(self.root, "postgres", "postgres")
            except LookupError as exc:
                shutil.rmtree(self.root)
                raise PostgresNotInstalled(f"no `postgres` system user: {INSTALL_HINT}") from exc

    @property
    def url(self) -> str:
        """postgresql+asyncpg URL of the server's own database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (creating the cluster and its database the first time)."""
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._server_cmd(
                "initdb", "-D", str(self.data), "-A", "trust", "-U", self.user,
                "-E", "UTF8", "--no-sync",
            )
        options = " ".join([
            f"-p {self.port}",
            f"-k {shlex.quote(str(self.root))}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        ])
        self._server_cmd(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )
        if fresh:
            self.create_database(self.database)

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected). Start it again later."""
        if self.running():
            self._server_cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return self._server_cmd("pg_ctl", "-D", str(self.data), "status", check=False) == 0

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql over TCP; returns its unaligned output."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", self.user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr.strip()}")
        return done.stdout

    def _server_cmd(self, tool: str, *args: str, check: bool = True) -> int:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, timeout=90, check=False
        )
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stdout.strip()} {done.stderr.strip()}\n{log}"
            )
        return done.returncode

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; import this fixture into a conftest to use it."""
    try:
        server = PostgresServer()
    except PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server
