"""HTTP/1.1 behaviour of the edge towards clients, against the real origin."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable

import httpx

from tests.edge.conftest import ROOM, Node, counters, media_folder, media_path, next_part
from tests.edge.rawhttp import Connection, request_bytes


def test_parts_carry_age_length_cors_and_origin_cache_control(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)
    with httpx.Client(base_url=edge.url, timeout=15) as c:
        first = c.get(f"{folder}/init.mp4")
        time.sleep(1.1)
        second = c.get(f"{folder}/init.mp4")
        direct = httpx.get(f"{origin.url}{folder}/init.mp4")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content == direct.content
    assert int(second.headers["age"]) >= 1
    assert second.headers["content-length"] == str(len(direct.content))
    assert second.headers["access-control-allow-origin"] == "*"
    assert "Age" in second.headers["access-control-expose-headers"]
    assert second.headers["cache-control"] == direct.headers["cache-control"]
    assert second.headers["content-type"] == "audio/mp4"


def test_head_has_headers_only(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    r = httpx.head(edge.url + playlist)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) > 100


def test_playlists_are_gzipped_when_asked(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    raw = httpx.get(edge.url + playlist, headers={"accept-encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip" and "accept-encoding" in raw.headers["vary"].lower()
    assert raw.text.startswith("#EXTM3U")  # httpx decoded it
    plain = httpx.get(edge.url + playlist, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.text.startswith("#EXTM3U")


def test_pipelined_requests_are_answered_in_order(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    folder = media_folder(origin.url, playlist)
    msn, part, hint = next_part(origin.url, playlist)

    async def go() -> list[tuple[int, bytes]]:
        c = await Connection.open(edge.port)
        # A held blocking request first, then instant ones: the answers must keep this order.
        targets = [f"{playlist}?_HLS_msn={msn}&_HLS_part={part}", "/healthz",
                   f"{folder}/init.mp4", hint, "/nope"]
        c.send(b"".join(request_bytes(t) for t in targets))
        replies = await c.read(len(targets))
        await c.close()
        return [(r.status, r.body[:8]) for r in replies]

    got = asyncio.run(go())
    assert [s for s, _ in got] == [200, 200, 200, 200, 404]
    assert got[0][1] == b"#EXTM3U\n" and got[1][1] == b"ok\n" and got[2][1][4:8] == b"ftyp"


def test_malformed_directives_get_400_at_the_edge(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    httpx.get(edge.url + playlist)  # a current playlist lets the edge judge "too far ahead"
    before = counters(origin.url, "townsquare_origin_requests_total")
    for q in ("_HLS_part=2", "_HLS_msn=abc", "_HLS_msn=1&_HLS_skip=perhaps", "_HLS_msn=999999"):
        r = httpx.get(f"{edge.url}{playlist}?{q}", timeout=5)
        assert r.status_code == 400, q
    after = counters(origin.url, "townsquare_origin_requests_total")
    assert sum(after.values()) == sum(before.values())


def test_blocking_request_for_a_cached_part_is_answered_locally(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    with httpx.Client(base_url=edge.url, timeout=15) as c:
        msn, part, _ = next_part(edge.url, playlist)
        assert c.get(f"{playlist}?_HLS_msn={msn}&_HLS_part={part}").status_code == 200
        local_before = counters(edge.url, "townsquare_edge_local_answers_total")[()]
        upstream_before = sum(counters(edge.url, "townsquare_edge_upstream_requests_total").values())
        # Older parts, and directives in another order: all inside the playlist just fetched.
        for m, p in ((msn, part), (msn - 1, 0), (msn - 1, 1)):
            r = c.get(f"{playlist}?_HLS_part={p}&_HLS_msn={m}")
            assert r.status_code == 200 and "max-age=" in r.headers["cache-control"]
    assert counters(edge.url, "townsquare_edge_local_answers_total")[()] >= local_before + 2
    assert sum(counters(edge.url, "townsquare_edge_upstream_requests_total").values()) == upstream_before


def test_a_plain_playlist_is_as_new_as_the_newest_part_the_edge_has_seen(
        origin: Node, edge: Node) -> None:
    """A player joins from the newest part it is shown: once a blocking answer brought a newer
    part, a plain request within the plain copy's lifetime gets the newer playlist, made
    locally, with the plain lifetime."""
    playlist = media_path(origin.url, ROOM)
    with httpx.Client(base_url=edge.url, timeout=15) as c:
        for _ in range(5):
            primed = time.monotonic()
            plain = c.get(playlist)  # cached under the plain URL for its max-age=1
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', plain.text)
            assert hint is not None, plain.text
            uri = hint[1]
            msn, part = map(int, re.findall(r"p(\d+)\.(\d+)\.m4s", uri)[0])
            assert c.get(f"{playlist}?_HLS_msn={msn}&_HLS_part={part}").status_code == 200
            upstream = sum(counters(edge.url, "townsquare_edge_upstream_requests_total").values())
            again = c.get(playlist)
            if time.monotonic() - primed < 0.8:  # the plain copy was still fresh
                break
        listed = re.compile(rf'^#EXT-X-PART:.*URI="{re.escape(uri)}"', re.MULTILINE)
        assert listed.search(again.text) and not listed.search(plain.text)
        assert again.headers["cache-control"] == plain.headers["cache-control"]
        assert sum(counters(edge.url, "townsquare_edge_upstream_requests_total").values()) \
            == upstream, "answered by the edge"
        assert counters(edge.url, "townsquare_edge_plain_refreshed_total")[()] >= 1


def test_a_plain_playlist_is_rebuilt_from_a_delta_update_without_asking_upstream(
        origin: Node, edge: Node) -> None:
    """Players that skip (hls.js does) bring only delta updates: the edge fills in the
    segments a delta skipped from the full copy it holds, so a plain request within the plain
    copy's lifetime gets a full playlist as new as the delta, and costs the origin nothing
    however many players join."""
    playlist = media_path(origin.url, ROOM)
    skip = re.compile(r"^#EXT-X-SKIP:SKIPPED-SEGMENTS=[1-9]", re.MULTILINE)
    deadline = time.monotonic() + 30  # until the room is long enough to skip something

    def asked_upstream() -> float:
        return sum(counters(edge.url, "townsquare_edge_upstream_requests_total").values())

    with httpx.Client(base_url=edge.url, timeout=15) as c:
        while True:
            primed = time.monotonic()
            before = asked_upstream()
            plain = c.get(playlist)  # cached under the plain URL for its max-age=1
            # Fetched now, not a copy cached by an earlier round or test: `primed` old at most.
            fetched = asked_upstream() > before
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="([^"]*p(\d+)\.(\d+)\.m4s)"',
                             plain.text)
            assert hint is not None, plain.text
            delta = c.get(f"{playlist}?_HLS_msn={hint[2]}&_HLS_part={hint[3]}&_HLS_skip=YES")
            upstream = asked_upstream()
            again = c.get(playlist)
            if fetched and skip.search(delta.text) and time.monotonic() - primed < 0.8:
                break
            assert time.monotonic() < deadline, "no delta update skipped a segment"
            time.sleep(1.1)  # the plain copy cached this round expires first
        assert asked_upstream() == upstream, "answered by the edge"
        listed = re.compile(rf'^#EXT-X-PART:.*URI="{re.escape(hint[1])}"', re.MULTILINE)
        assert again.status_code == 200 and not skip.search(again.text)
        assert listed.search(again.text) and not listed.search(plain.text)
        # The segments the plain copy listed, from the rebuilt one's first on, then newer ones.
        older, newer = _segments(plain.text), _segments(again.text)
        shift = newer[0] - older[0]
        assert shift >= 0 and newer[1][:len(older[1]) - shift] == older[1][shift:]
        assert len(newer[1]) >= 7
        assert again.headers["cache-control"] == plain.headers["cache-control"]
        assert counters(edge.url, "townsquare_edge_playlists_rebuilt_total")[()] >= 1


def _segments(text: str) -> tuple[int, list[str]]:
    """(media sequence, segment URIs) of a full media playlist."""
    first = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", text, re.MULTILINE)
    assert first is not None, text
    return int(first[1]), re.findall(r"^[^#\n].*$", text, re.MULTILINE)


def test_unknown_room_is_404_and_options_answers_cors(edge: Node) -> None:
    assert httpx.get(f"{edge.url}/live/no-such-room/master.m3u8").status_code == 404
    r = httpx.options(f"{edge.url}/live/{ROOM}/master.m3u8")
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert httpx.post(f"{edge.url}/live/{ROOM}/master.m3u8").status_code == 405


def test_metrics_and_health_and_listener_count(origin: Node, edge: Node) -> None:
    playlist = media_path(origin.url, ROOM)
    for ua in ("a", "b", "c"):
        httpx.get(edge.url + playlist, headers={"user-agent": ua})
    assert httpx.get(edge.url + "/healthz").text == "ok\n"
    text = httpx.get(edge.url + "/metrics").text
    for name in ("townsquare_edge_requests_total", "townsquare_edge_cache_hits_total",
                 "townsquare_edge_cache_misses_total", "townsquare_edge_upstream_requests_total",
                 "townsquare_edge_bytes_out_total", "townsquare_edge_open_connections",
                 "townsquare_edge_coalesced_waits_total", f'townsquare_edge_listeners{{room="{ROOM}"}}'):
        assert name in text, name
    listeners = httpx.get(f"{edge.url}/api/listeners/{ROOM}").json()["listeners"]
    assert 3 <= listeners <= 4


def test_listener_page_and_vendored_hls_js_are_served(edge: Node) -> None:
    page = httpx.get(f"{edge.url}/listen/{ROOM}")
    assert page.status_code == 200 and "/static/hls.min.js" in page.text
    js = httpx.get(f"{edge.url}/static/hls.min.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert "Apache" in httpx.get(f"{edge.url}/static/hls.js.LICENSE").text


def test_slow_headers_are_cut_off(origin: Node, edge_factory: Callable[..., Node]) -> None:
    e = edge_factory(origin.url, env={"TOWNSQUARE_EDGE_HEADER_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        start = time.monotonic()
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4


def test_a_stalled_body_or_a_stalled_pipelined_request_is_cut_off(
        origin: Node, edge_factory: Callable[..., Node]) -> None:
    e = edge_factory(origin.url, env={"TOWNSQUARE_EDGE_HEADER_TIMEOUT": "1",
                                      "TOWNSQUARE_EDGE_BODY_TIMEOUT": "1"})
    for opening, answers in (
        # a body that stops short of its length
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 1),
        # a whole request, then the next one's first bytes in the same packet, then nothing
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo", 2),
    ):
        with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
            s.sendall(opening)
            start = time.monotonic()
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data.count(b"HTTP/1.1 ") == answers, data
            assert data.rpartition(b"HTTP/1.1 ")[2].startswith(b"408"), data
            assert time.monotonic() - start < 4, opening


def test_connection_cap_gives_fast_503(origin: Node, edge_factory: Callable[..., Node]) -> None:
    e = edge_factory(origin.url, env={"TOWNSQUARE_EDGE_MAX_CONNECTIONS": "20"})
    socks = [socket.create_connection(("127.0.0.1", e.port), timeout=5) for _ in range(20)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in data
    finally:
        for s in socks:
            s.close()


def test_waiter_cap_gives_fast_503(origin: Node, edge_factory: Callable[..., Node]) -> None:
    e = edge_factory(origin.url, env={"TOWNSQUARE_EDGE_MAX_WAITERS": "10"})
    playlist = media_path(origin.url, ROOM)
    _, _, hint = next_part(origin.url, playlist)
    msn, _, _ = next_part(origin.url, playlist)

    async def go() -> list[tuple[int, str | None]]:
        conns = [await Connection.open(e.port) for _ in range(30)]
        for c in conns:  # the segment after next: held upstream for a while
            c.send(request_bytes(f"{playlist}?_HLS_msn={msn + 1}&_HLS_part=1"))
        replies = await asyncio.gather(*(c.read(1) for c in conns))
        for c in conns:
            await c.close()
        return [(r[0].status, r[0].headers.get("retry-after")) for r in replies]

    got = asyncio.run(go())
    assert got.count((200, None)) == 10
    assert got.count((503, "1")) == 20
