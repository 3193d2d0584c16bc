"""Rooms: created, read back, reused once ended, listed by state."""

from __future__ import annotations

import asyncio

import pytest

from registry import NoSuchRoom, Registry, RoomRecord, RoomTaken

HASH_A = "a" * 64
HASH_B = "b" * 64


async def test_created_room_reads_back_waiting_with_no_epoch(registry: Registry) -> None:
    created = await registry.create_room("town-hall", HASH_A, 1700000000.25)
    assert created == RoomRecord(
        name="town-hall", key_hash=HASH_A, state="waiting", created_at=1700000000.25,
        started_at=None, ended_at=None, end_reason=None, broadcast_id=None, epoch=0, next_msn=1,
    )
    assert await registry.get_room("town-hall") == created


async def test_unknown_room_reads_as_none(registry: Registry) -> None:
    assert await registry.get_room("nobody") is None


async def test_creating_an_open_room_twice_raises_room_taken(registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    with pytest.raises(RoomTaken):
        await registry.create_room("r", HASH_B, 2.0)
    await registry.go_live("r", "b1", 3.0)
    with pytest.raises(RoomTaken):
        await registry.create_room("r", HASH_B, 4.0)
    room = await registry.get_room("r")
    assert room is not None and room.key_hash == HASH_A and room.state == "live"


async def test_recreating_an_ended_room_keeps_epoch_and_next_msn(registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    await registry.go_live("r", "b1", 2.0)
    epoch = await registry.start_epoch("r", "b1", 2.0)
    assert await registry.advance("r", epoch.epoch, 42)
    await registry.end_room("r", 9.0, "requested")

    again = await registry.create_room("r", HASH_B, 10.0)

    assert again == RoomRecord(
        name="r", key_hash=HASH_B, state="waiting", created_at=10.0, started_at=None,
        ended_at=None, end_reason=None, broadcast_id=None, epoch=1, next_msn=42,
        key_generation=2,  # a new key: nothing the old one admitted counts
    )
    assert (await registry.start_epoch("r", "b2", 11.0)).epoch == 2


async def test_go_live_and_end_room_record_the_broadcast(registry: Registry) -> None:
    await registry.create_room("r", HASH_A, 1.0)
    live = await registry.go_live("r", "20250101T000000Z-abc123", 2.5)
    assert (live.state, live.broadcast_id, live.started_at) == (
        "live", "20250101T000000Z-abc123", 2.5
    )
    ended = await registry.end_room("r", 7.5, "idle for 600 s with no speaker")
    assert (ended.state, ended.ended_at, ended.end_reason) == (
        "ended", 7.5, "idle for 600 s with no speaker"
    )
    assert ended.broadcast_id == "20250101T000000Z-abc123"  # the last broadcast stays on record


async def test_set_key_hash_replaces_only_the_key(registry: Registry) -> None:
    before = await registry.create_room("r", HASH_A, 1.0)
    after = await registry.set_key_hash("r", HASH_B)
    assert after.key_hash == HASH_B
    assert after.created_at == before.created_at and after.state == before.state


async def test_changing_an_unknown_room_raises_no_such_room(registry: Registry) -> None:
    with pytest.raises(NoSuchRoom):
        await registry.set_key_hash("ghost", HASH_A)
    with pytest.raises(NoSuchRoom):
        await registry.go_live("ghost", "b", 1.0)
    with pytest.raises(NoSuchRoom):
        await registry.end_room("ghost", 1.0, "x")


async def test_lists_are_by_name_and_filtered_by_state(registry: Registry) -> None:
    for name in ["c-waiting", "a-live", "d-ended", "b-live"]:
        await registry.create_room(name, HASH_A, 1.0)
    await registry.go_live("a-live", "b1", 2.0)
    await registry.go_live("b-live", "b2", 2.0)
    await registry.go_live("d-ended", "b3", 2.0)
    await registry.end_room("d-ended", 3.0, "requested")

    assert [r.name for r in await registry.list_rooms()] == [
        "a-live", "b-live", "c-waiting", "d-ended"
    ]
    assert [r.name for r in await registry.open_rooms()] == ["a-live", "b-live", "c-waiting"]
    assert [r.name for r in await registry.live_rooms()] == ["a-live", "b-live"]


async def test_rooms_survive_closing_and_reopening(db_url: str) -> None:
    first = await Registry.open(db_url)
    await first.create_room("r", HASH_A, 1.0)
    await first.go_live("r", "b1", 2.0)
    await first.close()

    second = await Registry.open(db_url)
    try:
        assert [r.name for r in await second.live_rooms()] == ["r"]
    finally:
        await second.close()


async def test_concurrent_creates_of_one_name_let_exactly_one_through(db_url: str) -> None:
    registries = [await Registry.open(db_url) for _ in range(3)]  # three nodes
    try:
        results = await asyncio.gather(
            *(reg.create_room("r", f"{i:064d}", float(i)) for i, reg in enumerate(registries * 2)),
            return_exceptions=True,
        )
    finally:
        for reg in registries:
            await reg.close()
    created = [r for r in results if isinstance(r, RoomRecord)]
    assert len(created) == 1
    assert all(isinstance(r, RoomTaken) for r in results if r not in created)
