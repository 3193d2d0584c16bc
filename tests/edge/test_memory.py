"""The LRU bound holds while far more distinct objects pass through than fit."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.edge.conftest import ROOM, Node, gauge, media_folder, media_path
from tests.edge.rawhttp import Connection

BOUND = 128 * 1024
OBJECTS = 10_000
# Whole segments the origin must have cut before the test starts: 8 of the aac96 rendition
# (about 23 kB each) hold more than the bound, so good entries must be evicted whatever the
# room's age (the origin is shared by the session and may have just started).
SEGMENTS = 8


def _newest_segment(base: str, playlist: str, timeout: float = 60.0) -> int:
    """The newest whole segment's media sequence number, once it is at least SEGMENTS."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(base + playlist, timeout=5).text
        first = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)[1])  # type: ignore[index]
        skipped = re.search(r"#EXT-X-SKIP:SKIPPED-SEGMENTS=(\d+)", text)
        newest = first + (int(skipped[1]) if skipped else 0) + text.count("#EXTINF") - 1
        if newest >= SEGMENTS or time.monotonic() > deadline:
            return newest
        time.sleep(0.5)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


def test_memory_stays_bounded_over_10000_distinct_objects(
        origin: Node, edge_factory: Callable[..., Node]) -> None:
    edge = edge_factory(origin.url, env={"TOWNSQUARE_EDGE_CACHE_BYTES": str(BOUND)})
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)
    # Real media (segments and parts still on the origin) mixed with misses for well-formed
    # names of unknown epochs, which the edge caches as short-lived 404s in their own LRU:
    # every one is a distinct cache entry.
    newest = _newest_segment(origin.url, playlist)
    targets = [f"{folder}/s{m}.m4s" for m in range(1, newest + 1)]
    targets += [f"{folder}/p{m}.{n}.m4s" for m in range(1, newest + 1) for n in range(9)]
    targets += [f"/live/{ROOM}/aac96/e9-{i:06x}/s1.m4s" for i in range(OBJECTS - len(targets))]
    peak = 0.0
    rss_start = _rss_kib(edge.svc.proc.pid)

    async def worker(queue: list[str]) -> None:
        conn = await Connection.open(edge.port)
        while queue:
            r = await conn.get(queue.pop())
            assert r.status in (200, 404)
        await conn.close()

    for start in range(0, len(targets), 2000):
        batch = targets[start:start + 2000]
        asyncio.run(_run_workers(worker, batch))
        held = gauge(edge.url, "townsquare_edge_cache_bytes")
        peak = max(peak, held)
        assert held <= BOUND
    assert gauge(edge.url, "townsquare_edge_cache_evictions") > 0
    # The 404s filled their own share, not the LRU of good entries.
    assert gauge(edge.url, "townsquare_edge_negative_cache_evictions") > 0
    assert gauge(edge.url, "townsquare_edge_negative_cache_bytes") <= BOUND // 8
    assert len(targets) == OBJECTS
    # The process itself: the whole 10 000 objects are ~10× the bound; growth stays far below.
    growth_kib = _rss_kib(edge.svc.proc.pid) - rss_start
    assert growth_kib < 24 * 1024, f"edge RSS grew {growth_kib} KiB"
    assert peak > BOUND / 2


async def _run_workers(worker: Callable[[list[str]], Awaitable[None]], batch: list[str]) -> None:
    queue = list(batch)
    await asyncio.gather(*(worker(queue) for _ in range(16)))
