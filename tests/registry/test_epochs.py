"""Epochs: fencing numbers handed out once each, and media sequence numbers that never go back."""

from __future__ import annotations

import asyncio

import pytest

from registry import EpochRecord, NoSuchRoom, Registry, RegistryError

HASH = "f" * 64


@pytest.fixture
async def live_room(registry: Registry) -> str:
    await registry.create_room("r", HASH, 1.0)
    await registry.go_live("r", "b1", 2.0)
    return "r"


async def test_start_epoch_numbers_1_2_3_and_first_msn_follows_next_msn(
    registry: Registry, live_room: str
) -> None:
    one = await registry.start_epoch(live_room, "b1", 10.0)
    assert one == EpochRecord(live_room, 1, "b1", 10.0, None, first_msn=1, last_msn=None)
    assert await registry.advance(live_room, 1, 8)
    two = await registry.start_epoch(live_room, "b1", 20.0)
    assert (two.epoch, two.first_msn) == (2, 8)
    three = await registry.start_epoch(live_room, "b1", 30.0)
    assert (three.epoch, three.first_msn) == (3, 8)
    room = await registry.get_room(live_room)
    assert room is not None and (room.epoch, room.next_msn) == (3, 8)


async def test_concurrent_start_epoch_hands_out_distinct_numbers(
    registry: Registry, live_room: str
) -> None:
    started = await asyncio.gather(
        *(registry.start_epoch(live_room, "b1", float(i)) for i in range(10))
    )
    assert sorted(e.epoch for e in started) == list(range(1, 11))
    assert [e.epoch for e in await registry.epochs(live_room)] == list(range(1, 11))


async def test_two_registries_on_one_database_never_share_an_epoch(
    registry: Registry, live_room: str, db_url: str
) -> None:
    other = await Registry.open(db_url)  # a second node
    try:
        started = await asyncio.gather(
            *(reg.start_epoch(live_room, "b1", 1.0) for reg in [registry, other] * 5)
        )
    finally:
        await other.close()
    assert sorted(e.epoch for e in started) == list(range(1, 11))


async def test_advance_with_a_stale_epoch_returns_false_and_changes_nothing(
    registry: Registry, live_room: str
) -> None:
    old = await registry.start_epoch(live_room, "b1", 1.0)
    assert await registry.advance(live_room, old.epoch, 5)
    new = await registry.start_epoch(live_room, "b1", 2.0)

    assert await registry.advance(live_room, old.epoch, 9) is False

    room = await registry.get_room(live_room)
    assert room is not None and (room.epoch, room.next_msn) == (new.epoch, 5)
    assert [e.last_msn for e in await registry.epochs(live_room)] == [4, None]


async def test_advance_never_moves_next_msn_backwards(
    registry: Registry, live_room: str
) -> None:
    epoch = await registry.start_epoch(live_room, "b1", 1.0)
    assert await registry.advance(live_room, epoch.epoch, 10)
    assert await registry.advance(live_room, epoch.epoch, 7)  # still the owner: not fenced
    assert await registry.advance(live_room, epoch.epoch, 10)
    room = await registry.get_room(live_room)
    assert room is not None and room.next_msn == 10
    [record] = await registry.epochs(live_room)
    assert record.last_msn == 9


async def test_advance_on_an_unknown_room_raises_no_such_room(registry: Registry) -> None:
    with pytest.raises(NoSuchRoom):
        await registry.advance("ghost", 1, 2)
    with pytest.raises(NoSuchRoom):
        await registry.start_epoch("ghost", "b", 1.0)


async def test_end_epoch_records_the_first_end_time(
    registry: Registry, live_room: str
) -> None:
    epoch = await registry.start_epoch(live_room, "b1", 1.0)
    await registry.end_epoch(live_room, epoch.epoch, 5.0)
    await registry.end_epoch(live_room, epoch.epoch, 6.0)
    [record] = await registry.epochs(live_room)
    assert record.ended_at == 5.0


async def test_end_epoch_that_does_not_exist_raises(registry: Registry, live_room: str) -> None:
    with pytest.raises(NoSuchRoom):
        await registry.end_epoch("ghost", 1, 1.0)
    with pytest.raises(RegistryError, match="no epoch 7"):
        await registry.end_epoch(live_room, 7, 1.0)


async def test_epochs_can_be_listed_for_one_broadcast(
    registry: Registry, live_room: str
) -> None:
    await registry.start_epoch(live_room, "b1", 1.0)
    await registry.start_epoch(live_room, "b1", 2.0)
    await registry.end_room(live_room, 3.0, "requested")
    await registry.create_room(live_room, HASH, 4.0)
    await registry.go_live(live_room, "b2", 5.0)
    await registry.start_epoch(live_room, "b2", 5.0)

    assert [e.epoch for e in await registry.epochs(live_room, "b1")] == [1, 2]
    assert [e.epoch for e in await registry.epochs(live_room, "b2")] == [3]
    assert [e.epoch for e in await registry.epochs(live_room)] == [1, 2, 3]
    assert await registry.epochs("ghost") == []
