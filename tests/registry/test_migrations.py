"""Schema migrations: from nothing to head, from 0001 with rows to head, and tables.py in step."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from registry import Registry
from registry.engine import make_engine, parse_url
from registry.migrate import current, head, upgrade
from registry.tables import metadata


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(parse_url(db_url), connect_timeout=3.0, command_timeout=10.0)
    try:
        yield eng
    finally:
        await eng.dispose()


async def test_head_is_0002() -> None:
    assert head() == "0002"


async def test_upgrade_from_an_empty_database_to_head(engine: AsyncEngine) -> None:
    assert await current(engine) is None
    await upgrade(engine)
    assert await current(engine) == "0002"
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        columns = await conn.run_sync(
            lambda c: [col["name"] for col in sa.inspect(c).get_columns("rooms")]
        )
    assert {"rooms", "epochs", "alembic_version"} <= tables
    assert columns == [
        "name", "key_hash", "state", "created_at", "started_at", "ended_at", "end_reason",
        "broadcast_id", "epoch", "next_msn",
    ]


async def test_upgrade_from_0001_keeps_rooms_with_epoch_0_and_next_msn_1(
    engine: AsyncEngine, db_url: str
) -> None:
    await upgrade(engine, "0001")
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO rooms (name, key_hash, state, created_at, started_at, ended_at,"
            " end_reason, broadcast_id) VALUES"
            " ('old-open', :h, 'waiting', 1.5, NULL, NULL, NULL, NULL),"
            " ('old-done', :h, 'ended', 2.5, 3.5, 4.5, 'requested', 'b-old')"
        ), {"h": "e" * 64})

    registry = await Registry.open(db_url)  # migrates to head
    try:
        rooms = {r.name: r for r in await registry.list_rooms()}
    finally:
        await registry.close()

    assert await current(engine) == "0002"
    assert set(rooms) == {"old-open", "old-done"}
    assert all((r.epoch, r.next_msn) == (0, 1) for r in rooms.values())
    done = rooms["old-done"]
    assert (done.state, done.started_at, done.ended_at, done.end_reason, done.broadcast_id) == (
        "ended", 3.5, 4.5, "requested", "b-old"
    )


async def test_migrating_again_changes_nothing(db_url: str) -> None:
    first = await Registry.open(db_url)
    await first.create_room("r", "a" * 64, 1.0)
    await first.close()
    again = await Registry.open(db_url)
    try:
        assert [r.name for r in await again.list_rooms()] == ["r"]
    finally:
        await again.close()


async def test_table_definitions_match_the_migrations(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata)
        )
    assert diff == []
