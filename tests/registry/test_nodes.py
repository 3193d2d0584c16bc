"""The node directory: registered, heartbeating, listed while alive, least loaded first."""

from __future__ import annotations

import dataclasses

import pytest

from registry import NodeInfo, NoSuchNode, Registry


def node(id: str, rooms: int = 0, cpu: float = 0.0, capacity: int = 10, at: float = 100.0,
         draining: bool = False) -> NodeInfo:
    return NodeInfo(
        id=id, internal_url=f"http://{id}:8081", control_url=f"http://{id}:8080",
        rtmp_port=1935, rooms=rooms, cpu=cpu, capacity=capacity, heartbeat_at=at,
        draining=draining,
    )


async def test_a_registered_node_reads_back_as_registered(registry: Registry) -> None:
    registered = node("n1", rooms=2, cpu=0.25, capacity=40)
    await registry.register_node(registered)
    assert await registry.nodes(now=101.0) == [registered]


async def test_registering_again_overwrites_the_node(registry: Registry) -> None:
    await registry.register_node(node("n1", rooms=7, draining=True))
    restarted = dataclasses.replace(
        node("n1", at=200.0), internal_url="http://n1-new:8081", rtmp_port=1936
    )
    await registry.register_node(restarted)
    assert await registry.nodes(now=201.0) == [restarted]


async def test_heartbeat_reports_load_and_liveness(registry: Registry) -> None:
    await registry.register_node(node("n1", at=100.0))
    assert await registry.nodes(now=200.0) == []  # silent for 100 s: not alive

    await registry.heartbeat("n1", rooms=3, cpu=0.5, draining=False, now=195.0)

    [alive] = await registry.nodes(now=200.0)
    assert (alive.rooms, alive.cpu, alive.draining, alive.heartbeat_at) == (3, 0.5, False, 195.0)
    assert alive.load == 0.3
    assert await registry.nodes(now=205.0) == [alive]  # exactly alive_within old
    assert await registry.nodes(now=205.5) == []
    assert await registry.nodes(now=205.5, alive_within=30.0) == [alive]


async def test_nodes_are_listed_least_loaded_first_and_draining_ones_last(
    registry: Registry,
) -> None:
    for info in (
        node("busy", rooms=5, cpu=0.2, capacity=10),
        node("hot", rooms=1, cpu=0.9, capacity=10),
        node("cool", rooms=1, cpu=0.1, capacity=10),
        node("big", rooms=2, cpu=0.5, capacity=40),
        node("leaving", rooms=0, cpu=0.0, capacity=10, draining=True),
        node("full", rooms=10, cpu=0.3, capacity=10),
        node("dead", rooms=0, cpu=0.0, capacity=10, at=50.0),
    ):
        await registry.register_node(info)

    listed = await registry.nodes(now=105.0)

    assert [n.id for n in listed] == ["big", "cool", "hot", "busy", "full", "leaving"]
    assert [n.id for n in listed if n.draining] == ["leaving"]


async def test_a_node_starts_draining_through_its_heartbeat(registry: Registry) -> None:
    await registry.register_node(node("n1"))
    await registry.register_node(node("n2", rooms=4))
    await registry.heartbeat("n1", rooms=1, cpu=0.1, draining=True, now=101.0)
    assert [(n.id, n.draining) for n in await registry.nodes(now=102.0)] == [
        ("n2", False), ("n1", True)
    ]


async def test_heartbeat_of_an_unknown_or_forgotten_node_raises_no_such_node(
    registry: Registry,
) -> None:
    with pytest.raises(NoSuchNode):
        await registry.heartbeat("ghost", rooms=0, cpu=0.0, draining=False, now=1.0)
    await registry.register_node(node("n1"))
    await registry.forget_node("n1")
    await registry.forget_node("n1")  # forgetting twice is fine
    assert await registry.nodes(now=101.0) == []
    with pytest.raises(NoSuchNode, match="register"):
        await registry.heartbeat("n1", rooms=0, cpu=0.0, draining=False, now=101.0)
