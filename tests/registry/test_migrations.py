"""Schema migrations: from nothing to head, from 0001, 0002 or 0004 with rows to head, and
tables.py in step."""

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


async def test_head_is_0005() -> None:
    assert head() == "0005"


async def test_upgrade_from_an_empty_database_to_head(engine: AsyncEngine) -> None:
    assert await current(engine) is None
    await upgrade(engine)
    assert await current(engine) == "0005"
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        columns = await conn.run_sync(
            lambda c: [col["name"] for col in sa.inspect(c).get_columns("rooms")]
        )
    assert {"rooms", "epochs", "nodes", "alembic_version"} <= tables
    assert columns == [
        "name", "key_hash", "state", "created_at", "started_at", "ended_at", "end_reason",
        "broadcast_id", "epoch", "next_msn", "owner", "lease_expires", "private",
        "key_generation", "title", "description", "audience", "speakers",
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

    assert await current(engine) == "0005"
    assert set(rooms) == {"old-open", "old-done"}
    assert all((r.epoch, r.next_msn) == (0, 1) for r in rooms.values())
    done = rooms["old-done"]
    assert (done.state, done.started_at, done.ended_at, done.end_reason, done.broadcast_id) == (
        "ended", 3.5, 4.5, "requested", "b-old"
    )


async def test_upgrade_from_0002_keeps_rooms_and_epochs_unowned(
    engine: AsyncEngine, db_url: str
) -> None:
    await upgrade(engine, "0002")
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO rooms (name, key_hash, state, created_at, started_at, ended_at,"
            " end_reason, broadcast_id, epoch, next_msn) VALUES"
            " ('on-air', :h, 'live', 1.5, 2.5, NULL, NULL, 'b-1', 3, 40),"
            " ('done', :h, 'ended', 2.5, 3.5, 4.5, 'requested', 'b-0', 1, 7)"
        ), {"h": "e" * 64})
        await conn.execute(sa.text(
            "INSERT INTO epochs (room, epoch, broadcast_id, started_at, ended_at, first_msn,"
            " last_msn) VALUES ('on-air', 3, 'b-1', 2.5, NULL, 30, 39)"
        ))

    registry = await Registry.open(db_url)  # migrates to head
    try:
        rooms = {r.name: r for r in await registry.list_rooms()}
        [epoch] = await registry.epochs("on-air")
        orphans = await registry.rooms_to_adopt(now=10.0)
        lease = await registry.take_room("on-air", "n1", ttl=5.0, now=10.0)
    finally:
        await registry.close()

    assert await current(engine) == "0005"
    on_air, done = rooms["on-air"], rooms["done"]
    assert (on_air.state, on_air.broadcast_id, on_air.epoch, on_air.next_msn) == (
        "live", "b-1", 3, 40
    )
    assert (done.state, done.ended_at, done.end_reason, done.epoch, done.next_msn) == (
        "ended", 4.5, "requested", 1, 7
    )
    assert all((r.owner, r.lease_expires) == (None, None) for r in rooms.values())
    assert (epoch.epoch, epoch.first_msn, epoch.last_msn) == (3, 30, 39)
    assert [r.name for r in orphans] == ["on-air"]  # live and unowned: to be adopted
    assert lease is not None and (lease.epoch, lease.next_msn) == (4, 40)


async def test_upgrade_from_0004_keeps_rooms_untitled_with_no_presence(
    engine: AsyncEngine, db_url: str
) -> None:
    await upgrade(engine, "0004")
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO rooms (name, key_hash, state, created_at, started_at, ended_at,"
            " end_reason, broadcast_id, epoch, next_msn, owner, lease_expires, private,"
            " key_generation) VALUES"
            " ('on-air', :h, 'live', 1.5, 2.5, NULL, NULL, 'b-1', 3, 40, 'n1', 99.0, :f, 2),"
            " ('hidden', :h, 'ended', 2.5, 3.5, 4.5, 'requested', 'b-0', 1, 7, NULL, NULL, :t, 1)"
        ), {"h": "e" * 64, "f": False, "t": True})

    registry = await Registry.open(db_url)  # migrates to head
    try:
        rooms = {r.name: r for r in await registry.list_rooms()}
        titled = await registry.set_room_info("on-air", title="Still here")
    finally:
        await registry.close()

    assert await current(engine) == "0005"
    on_air, hidden = rooms["on-air"], rooms["hidden"]
    assert (on_air.state, on_air.broadcast_id, on_air.epoch, on_air.next_msn, on_air.owner,
            on_air.lease_expires, on_air.private, on_air.key_generation) == (
        "live", "b-1", 3, 40, "n1", 99.0, False, 2)
    assert (hidden.state, hidden.ended_at, hidden.private, hidden.next_msn) == (
        "ended", 4.5, True, 7)
    assert all((r.title, r.description, r.audience, r.speaker_names) == ("", "", 0, ())
               for r in rooms.values())
    assert titled.title == "Still here" and titled.next_msn == 40


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
