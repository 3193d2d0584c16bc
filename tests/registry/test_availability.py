"""A database that is not there: a clear RegistryUnavailable, fast, and recovery when it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import Registry, RegistryError, RegistryUnavailable, default_url
from tests.support.postgres import PostgresServer
from tests.support.procs import free_port


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of its own, since these tests stop it."""
    with PostgresServer() as server:
        yield server


@pytest.mark.timeout(120)
async def test_postgres_stopped_raises_unavailable_then_recovers(
    own_postgres: PostgresServer,
) -> None:
    registry = await Registry.open(own_postgres.url)
    try:
        await registry.create_room("r", "a" * 64, 1.0)
        epoch = await registry.start_epoch("r", "b1", 1.0)

        await asyncio.to_thread(own_postgres.stop)
        for call in (
            registry.ping(),
            registry.get_room("r"),
            registry.advance("r", epoch.epoch, 5),
        ):
            with pytest.raises(RegistryUnavailable, match="127.0.0.1"):
                await asyncio.wait_for(call, timeout=10)

        await asyncio.to_thread(own_postgres.start)
        await registry.ping()
        assert await registry.advance("r", epoch.epoch, 5)
        room = await registry.get_room("r")
        assert room is not None and room.next_msn == 5
    finally:
        await registry.close()


def stop_processes(server: PostgresServer, sig: int) -> None:
    """Send `sig` to the server's postmaster and every backend it forked."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        os.kill(pid, sig)


@pytest.mark.timeout(60)
async def test_postgres_that_never_answers_raises_unavailable_then_recovers(
    own_postgres: PostgresServer,
) -> None:
    registry = await Registry.open(own_postgres.url, connect_timeout=2.0, command_timeout=2.0)
    try:
        await registry.create_room("r", "a" * 64, 1.0)
        stop_processes(own_postgres, signal.SIGSTOP)
        try:
            for call in (registry.ping(), registry.get_room("r")):
                with pytest.raises(RegistryUnavailable, match="TimeoutError"):
                    await asyncio.wait_for(call, timeout=10)
        finally:
            stop_processes(own_postgres, signal.SIGCONT)
        assert await registry.get_room("r") is not None
    finally:
        await registry.close()


@pytest.mark.timeout(30)
async def test_open_on_a_missing_database_raises_unavailable(
    postgres_server: PostgresServer,
) -> None:
    with pytest.raises(RegistryUnavailable, match="no-such-db"):
        await Registry.open(postgres_server.url_for("no-such-db"))


@pytest.mark.timeout(30)
async def test_open_on_a_closed_port_raises_unavailable_naming_the_url_without_password() -> None:
    port = free_port()
    url = f"postgresql+asyncpg://townsquare:s3cret-pw@127.0.0.1:{port}/townsquare"
    with pytest.raises(RegistryUnavailable) as raised:
        await asyncio.wait_for(Registry.open(url), timeout=10)
    assert f"127.0.0.1:{port}/townsquare" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


async def test_open_on_an_unopenable_sqlite_file_raises_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-folder' / 'x.db'}"
    with pytest.raises(RegistryUnavailable, match="missing-folder"):
        await Registry.open(url)
    # After a failed connect aiosqlite stops its worker thread without waiting for it; let the
    # thread finish while this test's loop is open, or it reports "Event loop is closed".
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5.0)


async def test_a_url_for_a_sync_or_unknown_driver_is_refused() -> None:
    with pytest.raises(RegistryError, match="not supported"):
        await Registry.open("mysql://u:pw@localhost/db")
    with pytest.raises(RegistryError, match="not supported"):
        await Registry.open("postgresql+psycopg2://u@localhost/db")


async def test_default_url_is_an_absolute_sqlite_file_in_a_created_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = default_url(Path("data") / "nested")
    db = tmp_path / "data" / "nested" / "townsquare.db"
    assert url == f"sqlite+aiosqlite:///{db}"
    assert db.parent.is_dir()
    registry = await Registry.open(url)
    try:
        assert registry.describe() == f"sqlite {db}"
    finally:
        await registry.close()


async def test_describe_names_postgres_host_port_and_database_never_the_password(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url.replace("townsquare@", "townsquare:pw-never-shown@")
    registry = await Registry.open(url)
    try:
        assert registry.describe() == f"postgresql 127.0.0.1:{postgres_server.port}/townsquare"
    finally:
        await registry.close()


async def test_plain_postgresql_url_uses_asyncpg(postgres_server: PostgresServer) -> None:
    url = postgres_server.url.replace("postgresql+asyncpg://", "postgresql://")
    registry = await Registry.open(url)
    try:
        await registry.ping()
    finally:
        await registry.close()
