"""Origin load depends on the number of edges, never on the number of listeners."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx

from tests.edge.conftest import (
    ROOM,
    Node,
    gauge,
    media_folder,
    media_path,
    next_part,
    origin_requests,
)
from tests.edge.rawhttp import Connection, Reply, request_bytes

CLIENTS = 500


async def _fan_out(port: int, target: str, clients: int = CLIENTS) -> list[Reply]:
    """Open every connection first, then send all requests at once."""
    conns = await asyncio.gather(*(Connection.open(port) for _ in range(clients)))
    try:
        data = request_bytes(target)
        for c in conns:
            c.send(data)
        replies = await asyncio.gather(*(c.read(1, timeout=20) for c in conns))
        return [r[0] for r in replies]
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def _delta(before: dict[str, float], after: dict[str, float], kind: str) -> float:
    return after.get(kind, 0) - before.get(kind, 0)


def test_500_clients_asking_for_a_new_part_cause_one_upstream_request(
        origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    _, _, part = next_part(origin.url, playlist)
    before = origin_requests(origin.url)
    replies = asyncio.run(_fan_out(edge.port, part))
    after = origin_requests(origin.url)
    assert {r.status for r in replies} == {200}
    assert len({r.body for r in replies}) == 1 and replies[0].body
    assert _delta(before, after, "part") == 1


def test_500_blocking_requests_for_the_next_part_cause_one_upstream_request(
        origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    msn, part, uri = next_part(origin.url, playlist)
    before = origin_requests(origin.url)
    replies = asyncio.run(_fan_out(edge.port, f"{playlist}?_HLS_msn={msn}&_HLS_part={part}"))
    after = origin_requests(origin.url)
    assert {r.status for r in replies} == {200}
    name = "/".join(uri.rsplit("/", 2)[1:])  # the playlist names it from its epoch folder
    assert all(f'URI="{name}"' in r.body.decode() for r in replies), "answer lacks the part"
    assert _delta(before, after, "blocking_playlist") == 1
    assert _delta(before, after, "playlist") == 0


def test_random_query_parameters_add_no_upstream_requests(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)
    msn, part, uri = next_part(origin.url, playlist)
    targets = [f"{folder}/init.mp4", f"/live/{ROOM}/master.m3u8", uri,
               f"{playlist}?_HLS_msn={msn}&_HLS_part={part}"]
    with httpx.Client(base_url=edge.url, timeout=15) as c:
        for t in targets:  # warm the cache
            assert c.get(t).status_code == 200
        before = origin_requests(origin.url)
        entries = gauge(edge.url, "townsquare_edge_cache_entries")
        started = time.monotonic()
        for _ in range(50):
            for t in targets:
                sep = "&" if "?" in t else "?"
                junk = f"cb={random.random()}&_hls_msn=9&x{random.randint(0, 1 << 30)}=1"
                assert c.get(f"{t}{sep}{junk}").status_code == 200
        # Same directives in another order and with foreign ones around them: same key.
        assert c.get(f"{playlist}?z=1&_HLS_part={part}&q=2&_HLS_msn={msn}").status_code == 200
        elapsed = time.monotonic() - started
    after = origin_requests(origin.url)
    # No key was made of the noise: the cache holds the four objects it held.
    assert gauge(edge.url, "townsquare_edge_cache_entries") == entries
    # What reached the origin is the four copies' ordinary refreshes (the master lives 1 s;
    # on a loaded machine the 201 requests can outlast it), never one per request.
    refreshes = sum(after.values()) - sum(before.values())
    assert refreshes <= len(targets) * (1 + int(elapsed)), (elapsed, before, after)


def _chain_round(origin: Node, edges: list[Node]) -> dict[str, float]:
    """Listeners on every edge ask for the next part and the playlist that holds it."""
    playlist = media_path(origin.url, ROOM)
    msn, part, uri = next_part(origin.url, playlist)
    before = origin_requests(origin.url)

    async def listeners() -> None:
        targets = [uri, f"{playlist}?_HLS_msn={msn}&_HLS_part={part}"]
        async with asyncio.TaskGroup() as tg:
            for e in edges:
                for t in targets:
                    tg.create_task(_fan_out(e.port, t, 50))

    asyncio.run(listeners())
    after = origin_requests(origin.url)
    return {k: _delta(before, after, k) for k in ("part", "blocking_playlist")}


def test_two_edges_under_a_shield_cost_the_origin_what_one_edge_does(
        origin: Node, edge_factory: Callable[..., Node]) -> None:
    shield = edge_factory(origin.url)
    a = edge_factory(shield.url)
    b = edge_factory(shield.url)
    one = [_chain_round(origin, [a]) for _ in range(3)]
    two = [_chain_round(origin, [a, b]) for _ in range(3)]
    assert one == two == [{"part": 1, "blocking_playlist": 1}] * 3
