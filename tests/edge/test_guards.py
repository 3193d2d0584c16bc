"""What the edge answers by itself: names that name nothing, negative answers, and blocking
requests that were already satisfied (the newest playlist, never an Age past its max-age)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.edge.conftest import ROOM, Node, counters, gauge, media_folder, media_path, next_part
from tests.edge.rawhttp import Connection, Reply


def _origin_total(origin: Node) -> float:
    return sum(counters(origin.url, "townsquare_origin_requests_total").values())


def test_names_that_name_nothing_cost_the_origin_nothing(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)
    deadline = time.monotonic() + 10
    while (msn := next_part(origin.url, playlist)[0]) < 2:  # a whole segment behind it
        assert time.monotonic() < deadline, msn
        time.sleep(0.2)
    assert httpx.get(edge.url + playlist).status_code == 200  # the rendition's reach, pinned
    before = _origin_total(origin)
    refused = {
        f"/live/{ROOM}/aac96/whatever.m4s": 404,
        f"/live/{ROOM}/room.json": 404,  # the store's, not the listeners'
        f"/live/{ROOM}/aac96/e1-0a1b2c/i1.m3u8": 404,
        f"/live/{ROOM}/aac96/./live.m3u8": 400,
        f"/live/{ROOM}//aac96/live.m3u8": 400,
        f"/live/{ROOM}/x/../aac96/live.m3u8": 400,
        f"/live/{ROOM}/aac96/%6Cive.m3u8": 400,
        f"{folder}/p{msn}.999.m4s": 404,  # no segment holds that many parts
        f"{folder}/s{msn + 500}.m4s": 404,  # far beyond the live edge of this epoch
        f"{folder}/p{msn + 500}.0.m4s": 404,
        f"{playlist}?_HLS_msn={msn}&_HLS_part=999": 400,
        # A whole segment the pinned copy holds: the part index is still impossible.
        f"{playlist}?_HLS_msn={msn - 1}&_HLS_part=999": 400,
    }

    async def ask() -> list[Reply]:
        conn = await Connection.open(edge.port)
        try:
            return [await conn.get(t, timeout=5) for t in refused]
        finally:
            await conn.close()

    for (target, status), r in zip(refused.items(), asyncio.run(ask()), strict=True):
        assert r.status == status, (target, r.status, r.body)
        if status == 404:
            assert r.headers["cache-control"] == "public, max-age=2"
    assert _origin_total(origin) == before
    counts = counters(edge.url, "townsquare_edge_refused_total")
    assert counts[("part_index",)] >= 2 and counts[("msn_ahead",)] >= 2
    assert counts[("path",)] >= 3 and counts[("malformed",)] >= 4


def test_negative_answers_are_cached_briefly_in_their_own_lru(origin: Node, edge: Node) -> None:
    unknown = f"/live/{ROOM}/aac96/e9-abcdef/s1.m4s"  # well formed, but no such epoch
    with httpx.Client(base_url=edge.url, timeout=5) as c:
        before = _origin_total(origin)
        assert {c.get(unknown).status_code for _ in range(20)} == {404}
        assert _origin_total(origin) - before == 1
        assert gauge(edge.url, "townsquare_edge_negative_cache_entries") >= 1
        assert counters(edge.url, "townsquare_edge_negative_hits_total")[("segment",)] >= 19
        time.sleep(2.2)  # no longer than 2 s
        assert c.get(unknown).status_code == 404
        assert _origin_total(origin) - before == 2


def _hint(text: str) -> tuple[int, int]:
    m = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[^"]*p(\d+)\.(\d+)\.m4s"', text)
    assert m, text
    return int(m[1]), int(m[2])


def test_satisfied_blocking_request_gets_the_newest_playlist_within_its_age(
        origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    msn, part, _ = next_part(origin.url, playlist)
    target = f"{playlist}?_HLS_msn={msn}&_HLS_part={part}"
    seen = []
    with httpx.Client(base_url=edge.url, timeout=15) as c:
        first = c.get(target)
        assert first.status_code == 200
        # One listener asking the same satisfied request again, as VHS does: nothing else
        # refreshes the edge's copy.
        for _ in range(8):
            time.sleep(0.4)
            r = c.get(target)
            assert r.status_code == 200
            age = int(r.headers["age"])
            lifetime = int(re.search(r"max-age=(\d+)", r.headers["cache-control"])[1])  # type: ignore[index]
            assert age <= lifetime, (age, r.headers["cache-control"])
            assert lifetime <= 1, r.headers["cache-control"]
            seen.append(_hint(r.text))
    assert seen[-1] > _hint(first.text), "the edge kept answering from an old copy"
    assert seen == sorted(seen)
