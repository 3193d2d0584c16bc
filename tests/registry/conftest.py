"""Registry tests run on both backends: SQLite in tmp_path, and a fresh database per test on one
real PostgreSQL server for the session (`tests.support.postgres`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registry import Registry
from tests.support.postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]  # the session fixture, shared with other test folders

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[Registry]:
    reg = await Registry.open(db_url)
    try:
        yield reg
    finally:
        await reg.close()
