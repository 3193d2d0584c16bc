"""Room leases: one owner at a time, a new epoch with every take, and a lost owner fenced off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from registry import (
    Lease,
    NodeInfo,
    NoSuchRoom,
    Owner,
    Registry,
    RegistryUnavailable,
)
from tests.support.postgres import PostgresServer

HASH = "f" * 64


async def live(registry: Registry, name: str = "r", started_at: float = 2.0) -> str:
    await registry.create_room(name, HASH, 1.0)
    await registry.go_live(name, "b1", started_at)
    return name


async def test_a_held_room_cannot_be_taken_until_its_lease_expires(registry: Registry) -> None:
    room = await live(registry)

    first = await registry.take_room(room, "A", ttl=10.0, now=100.0)
    assert first == Lease(room, "A", epoch=1, expires=110.0, next_msn=1, broadcast_id="b1")
    assert await registry.take_room(room, "B", ttl=10.0, now=105.0) is None
    assert await registry.take_room(room, "B", ttl=10.0, now=110.0) is None  # expires is live
    second = await registry.take_room(room, "B", ttl=10.0, now=110.5)

    assert second == Lease(room, "B", epoch=2, expires=120.5, next_msn=1, broadcast_id="b1")
    stored = await registry.get_room(room)
    assert stored is not None and (stored.owner, stored.lease_expires, stored.epoch) == (
        "B", 120.5, 2
    )


async def test_taking_a_live_room_records_its_epoch_from_next_msn(registry: Registry) -> None:
    room = await live(registry)
    first = await registry.take_room(room, "A", ttl=10.0, now=100.0)
    assert first is not None and await registry.advance(room, first.epoch, 8)
    second = await registry.take_room(room, "B", ttl=10.0, now=200.0)
    assert second is not None and second.next_msn == 8

    recorded = await registry.epochs(room, "b1")
    assert [(e.epoch, e.started_at, e.first_msn, e.last_msn) for e in recorded] == [
        (1, 100.0, 1, 7), (2, 200.0, 8, None)
    ]
    await registry.end_epoch(room, second.epoch, 210.0)


async def test_taking_a_waiting_room_hands_out_an_epoch_without_a_broadcast(
    registry: Registry,
) -> None:
    await registry.create_room("w", HASH, 1.0)
    lease = await registry.take_room("w", "A", ttl=10.0, now=100.0)
    assert lease == Lease("w", "A", epoch=1, expires=110.0, next_msn=1, broadcast_id=None)
    assert await registry.epochs("w") == []


async def test_taking_a_room_you_hold_starts_a_new_epoch(registry: Registry) -> None:
    room = await live(registry)
    old = await registry.take_room(room, "A", ttl=10.0, now=100.0)
    new = await registry.take_room(room, "A", ttl=10.0, now=101.0)
    assert old is not None and new is not None
    assert (old.epoch, new.epoch, new.expires) == (1, 2, 111.0)
    assert await registry.advance(room, old.epoch, 5) is False
    assert await registry.advance(room, new.epoch, 5)


async def test_taking_an_unknown_room_raises_no_such_room(registry: Registry) -> None:
    with pytest.raises(NoSuchRoom):
        await registry.take_room("ghost", "A", ttl=10.0, now=1.0)


async def test_a_lease_needs_a_positive_ttl(registry: Registry) -> None:
    room = await live(registry)
    with pytest.raises(ValueError, match="positive ttl"):
        await registry.take_room(room, "A", ttl=0.0)
    with pytest.raises(ValueError, match="positive ttl"):
        await registry.renew_leases("A", [room], ttl=-1.0)


async def test_ten_nodes_racing_for_an_expired_room_leave_one_owner(registry: Registry) -> None:
    room = await live(registry)
    assert await registry.take_room(room, "crashed", ttl=1.0, now=0.0) is not None

    taken = await asyncio.gather(
        *(registry.take_room(room, f"n{i}", ttl=10.0, now=100.0) for i in range(10))
    )

    [winner] = [lease for lease in taken if lease is not None]
    assert winner.epoch == 2
    stored = await registry.get_room(room)
    assert stored is not None and (stored.owner, stored.epoch) == (winner.node, 2)
    assert [e.epoch for e in await registry.epochs(room)] == [1, 2]


async def test_two_registries_racing_for_a_room_leave_one_owner(
    registry: Registry, db_url: str
) -> None:
    room = await live(registry)
    other = await Registry.open(db_url)  # a second process on the same database
    try:
        taken = await asyncio.gather(
            *(reg.take_room(room, f"n{i}", ttl=10.0, now=100.0)
              for i, reg in enumerate([registry, other] * 5))
        )
        owner = await other.owner_of(room, now=101.0)
    finally:
        await other.close()

    [winner] = [lease for lease in taken if lease is not None]
    assert winner.epoch == 1
    assert owner is not None and (owner.node, owner.epoch) == (winner.node, 1)


async def test_renew_extends_only_the_leases_still_held(registry: Registry) -> None:
    for name in ("r1", "r2", "r3"):
        await live(registry, name)
    assert await registry.take_room("r1", "A", ttl=10.0, now=100.0)
    assert await registry.take_room("r2", "A", ttl=10.0, now=100.0)
    assert await registry.take_room("r3", "B", ttl=10.0, now=100.0)

    assert await registry.renew_leases("A", ["r1", "r2", "r3", "ghost"], ttl=10.0, now=105.0) == {
        "r1": 115.0, "r2": 115.0
    }
    assert await registry.renew_leases("A", ["r1"], ttl=10.0, now=114.0) == {"r1": 124.0}
    assert await registry.take_room("r2", "B", ttl=10.0, now=116.0) is not None  # r2 expired

    assert await registry.renew_leases("A", ["r1", "r2"], ttl=10.0, now=117.0) == {"r1": 127.0}
    assert await registry.renew_leases("A", ["r1"], ttl=10.0, now=127.5) == {}  # expired: lost
    assert await registry.renew_leases("A", [], ttl=10.0) == {}
    r2 = await registry.get_room("r2")
    assert r2 is not None and (r2.owner, r2.lease_expires) == ("B", 126.0)


async def test_release_by_a_stale_epoch_or_another_node_does_nothing(
    registry: Registry,
) -> None:
    room = await live(registry)
    old = await registry.take_room(room, "A", ttl=10.0, now=100.0)
    new = await registry.take_room(room, "A", ttl=10.0, now=101.0)
    assert old is not None and new is not None

    assert await registry.release_room(room, "A", old.epoch) is False
    assert await registry.release_room(room, "B", new.epoch) is False
    assert await registry.release_room("ghost", "A", new.epoch) is False
    owner = await registry.owner_of(room, now=102.0)
    assert owner is not None and (owner.node, owner.epoch) == ("A", new.epoch)

    assert await registry.release_room(room, "A", new.epoch) is True
    assert await registry.owner_of(room, now=102.0) is None
    stored = await registry.get_room(room)
    assert stored is not None and (stored.owner, stored.lease_expires) == (None, None)
    taken = await registry.take_room(room, "B", ttl=10.0, now=102.0)  # free at once
    assert taken is not None and taken.epoch == new.epoch + 1


async def test_owner_of_names_the_live_owner_and_its_internal_url(registry: Registry) -> None:
    room = await live(registry)
    await registry.register_node(
        NodeInfo("A", "http://10.0.0.1:8081", "http://10.0.0.1:8080", 1935, 0, 0.0, 50, 100.0)
    )
    assert await registry.owner_of(room, now=100.0) is None
    lease = await registry.take_room(room, "A", ttl=10.0, now=100.0)
    assert lease is not None

    assert await registry.owner_of(room, now=105.0) == Owner(
        "A", lease.epoch, 110.0, "http://10.0.0.1:8081"
    )
    assert await registry.owner_of(room, now=110.5) is None  # expired
    assert await registry.owner_of("ghost", now=105.0) is None
    await registry.forget_node("A")  # the lease outlives the directory entry
    assert await registry.owner_of(room, now=105.0) == Owner("A", lease.epoch, 110.0, None)


async def test_rooms_to_adopt_are_live_rooms_without_a_live_lease_oldest_first(
    registry: Registry,
) -> None:
    await registry.create_room("waiting", HASH, 1.0)
    await live(registry, "unowned", started_at=5.0)
    await live(registry, "expired", started_at=3.0)
    await live(registry, "held", started_at=1.0)
    await live(registry, "released", started_at=4.0)
    await live(registry, "gone", started_at=2.0)
    assert await registry.take_room("expired", "A", ttl=10.0, now=10.0)
    assert await registry.take_room("held", "A", ttl=100.0, now=10.0)
    lease = await registry.take_room("released", "A", ttl=100.0, now=10.0)
    assert lease is not None and await registry.release_room("released", "A", lease.epoch)
    assert await registry.take_room("gone", "A", ttl=10.0, now=10.0)
    await registry.end_room("gone", 15.0, "requested")

    adopt = await registry.rooms_to_adopt(now=50.0)

    assert [r.name for r in adopt] == ["expired", "released", "unowned"]
    assert [(r.owner, r.lease_expires) for r in adopt] == [
        ("A", 20.0), (None, None), (None, None)
    ]
    taken = await registry.take_room("expired", "B", ttl=10.0, now=50.0)
    assert taken is not None
    assert [r.name for r in await registry.rooms_to_adopt(now=50.0)] == ["released", "unowned"]


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of its own, since the partition test stops it."""
    with PostgresServer() as server:
        yield server


@pytest.mark.timeout(120)
async def test_an_owner_cut_off_from_the_database_loses_the_room_and_is_fenced(
    own_postgres: PostgresServer,
) -> None:
    node_a = await Registry.open(own_postgres.url)
    node_b = await Registry.open(own_postgres.url)
    try:
        room = await live(node_a)
        lease = await node_a.take_room(room, "A", ttl=10.0, now=100.0)
        assert lease is not None and await node_a.advance(room, lease.epoch, 5)

        await asyncio.to_thread(own_postgres.stop)  # the partition: A cannot renew
        with pytest.raises(RegistryUnavailable):
            await asyncio.wait_for(
                node_a.renew_leases("A", [room], ttl=10.0, now=105.0), timeout=10
            )
        # A must stop publishing by lease.expires (110): its last renewal that succeeded.

        await asyncio.to_thread(own_postgres.start)
        assert await node_b.take_room(room, "B", ttl=10.0, now=109.0) is None  # A's lease runs
        taken = await node_b.take_room(room, "B", ttl=10.0, now=111.0)
        assert taken is not None and taken.epoch == lease.epoch + 1 and taken.next_msn == 5

        assert await node_a.renew_leases("A", [room], ttl=10.0, now=112.0) == {}
        assert await node_a.advance(room, lease.epoch, 9) is False  # A's late write: fenced
        assert await node_a.release_room(room, "A", lease.epoch) is False
        assert await node_b.advance(room, taken.epoch, 9)
        stored = await node_b.get_room(room)
        assert stored is not None
        assert (stored.owner, stored.epoch, stored.next_msn) == ("B", taken.epoch, 9)
    finally:
        await node_a.close()
        await node_b.close()


async def test_a_waiting_room_goes_live_in_the_write_that_takes_it(registry: Registry) -> None:
    await registry.create_room("w", HASH, 1.0)
    lease = await registry.take_room("w", "A", ttl=10.0, now=100.0, go_live="b7")
    assert lease is not None and lease.broadcast_id == "b7" and lease.epoch == 1
    stored = await registry.get_room("w")
    assert stored is not None and (stored.state, stored.broadcast_id, stored.started_at) == (
        "live", "b7", 100.0)
    assert [e.epoch for e in await registry.epochs("w", "b7")] == [1]
    # Another node cannot start a second broadcast of it, and an ended room is not taken.
    assert await registry.take_room("w", "B", ttl=10.0, now=101.0, go_live="b8") is None
    await registry.end_room("w", 102.0, "done")
    assert await registry.take_room("w", "B", ttl=10.0, now=200.0) is None
