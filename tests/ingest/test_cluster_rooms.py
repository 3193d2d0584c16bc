"""Rooms placed by leases among several nodes sharing one registry, in one process (the
packager is the recording twin): twenty rooms over three nodes, a fourth joining, capacity,
and orphans adopted by the least busy node."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from ingest.errors import RoomElsewhere, RoomFull
from ingest.metrics import IngestMetrics
from ingest.node import Node
from ingest.rooms import Rooms
from registry import Registry, default_url
from tests.ingest.twins import RecordingPackager

# Short, so that an orphan is adopted within the test.
LEASE = 1.5
# For tests that never wait for a lease to run out: twenty rooms created one after another on
# a loaded 2-core machine kept SQLite busy past a 1.5 s lease, whose first renewal then came
# too late, and rooms were stopped and placed again (one CI run: 10/6/4 instead of 7/7/6).
LONG_LEASE = 10.0


async def _node(registry: Registry, n: int, capacity: int = 100,
                lease: float = LEASE) -> Rooms:
    rooms = Rooms(RecordingPackager(), registry, IngestMetrics())
    rooms.node = Node(registry, f"node-{n}", f"http://node-{n}:8001", f"http://node-{n}:8000",
                      1935 + n, capacity, lease)
    await rooms.node.start(rooms)
    return rooms


async def test_twenty_rooms_spread_over_three_nodes_and_a_fourth_takes_new_ones(
        tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    nodes = [await _node(registry, n, lease=LONG_LEASE) for n in (1, 2, 3)]
    try:
        for i in range(20):
            room, _ = await nodes[0].create(f"room-{i}")
            # The TCP load balancer spreads speakers (and so new rooms) over the nodes.
            here = nodes[i % 3]
            await here.admit(await here.find(room.name))
        owners = Counter(r.owner for r in await registry.list_rooms())
        assert owners == {"node-1": 7, "node-2": 7, "node-3": 6}
        # Another node cannot put a room on air that one of them holds.
        with pytest.raises(RoomElsewhere, match="node-1"):
            await nodes[1].admit(await nodes[1].find("room-0"))
        fourth = await _node(registry, 4, lease=LONG_LEASE)
        nodes.append(fourth)
        for i in range(3):
            room, _ = await fourth.create(f"new-{i}")
            await fourth.admit(room)
        assert Counter(r.owner for r in await registry.list_rooms())["node-4"] == 3
    finally:
        for rooms in nodes:
            await rooms.close()
        await registry.close()


async def test_a_node_at_capacity_refuses_new_rooms_with_a_reason(tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    small = await _node(registry, 1, capacity=1, lease=LONG_LEASE)
    try:
        first, _ = await small.create("first")
        await small.admit(first)
        second, _ = await small.create("second")
        with pytest.raises(RoomFull, match="capacity"):
            await small.admit(second)
    finally:
        await small.close()
        await registry.close()


async def test_an_orphaned_room_goes_to_the_least_busy_node(tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    busy, idle, dying = [await _node(registry, n) for n in (1, 2, 3)]
    try:
        for i in range(3):
            room, _ = await busy.create(f"busy-{i}")
            await busy.admit(room)
        orphan, _ = await dying.create("orphan")
        await dying.admit(orphan)
        assert dying.node is not None
        await dying.node.stop()  # it dies: no renewals, no release
        await asyncio.sleep(LEASE + 2.5)
        rec = await registry.get_room("orphan")
        assert rec is not None and rec.owner == "node-2", "adopted by the node with no rooms"
        assert idle.get("orphan").on_air
    finally:
        for rooms in (busy, idle, dying):
            await rooms.close()
        await registry.close()
