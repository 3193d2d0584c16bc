"""Ingest limits against a real `townsquare ingest` over real sockets: RTMP deadlines, the
pre-auth byte cap and per-address counts, the control API's rate and body bounds, and a
real ffmpeg publish that still works with all of them in force."""

from __future__ import annotations

import asyncio
import os
import re
import select
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ingest.support import Ingest, ffmpeg_publish, ingest_service, wait_for
from tests.ingest.twins import ToneTrack, whip_offer

HANDSHAKE_S = 1.5
PUBLISH_S = 1.5
IDLE_S = 3.0
PREAUTH = 8192
PER_ADDRESS = 3
RATE, BURST = 20, 30

LIMITS_ENV = {
    "TOWNSQUARE_RTMP_HANDSHAKE_SECONDS": str(HANDSHAKE_S),
    "TOWNSQUARE_RTMP_PUBLISH_SECONDS": str(PUBLISH_S),
    "TOWNSQUARE_RTMP_IDLE_SECONDS": str(IDLE_S),
    "TOWNSQUARE_RTMP_PREAUTH_BYTES": str(PREAUTH),
    "TOWNSQUARE_RTMP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    "TOWNSQUARE_API_RATE_PER_SECOND": str(RATE),
    "TOWNSQUARE_API_BURST": str(BURST),
    "TOWNSQUARE_WHIP_MAX_SESSIONS_PER_ADDRESS": "1",
}


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with ingest_service(tmp_path_factory.mktemp("limits"), LIMITS_ENV) as svc:
        yield svc


def limit_hits(ingest: Ingest, limit: str) -> float:
    text = httpx.get(f"{ingest.control}/metrics", timeout=5).text
    m = re.search(rf'^townsquare_ingest_limit_hits_total{{limit="{limit}"}} (\S+)$', text, re.MULTILINE)
    return float(m[1]) if m else 0.0


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_peer(s: socket.socket, wait: float) -> bool:
    """True once the server has closed `s` (EOF or reset), waiting up to `wait` seconds;
    whatever else arrives meanwhile is read and dropped."""
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], left)
        if not ready:
            return False
        try:
            if not s.recv(65_536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def handshake(s: socket.socket) -> None:
    s.sendall(b"\x03" + bytes(1536))
    got = b""
    while len(got) < 1 + 2 * 1536:
        chunk = s.recv(65_536)
        assert chunk, "the server closed during the handshake"
        got += chunk
    s.sendall(bytes(1536))  # C2


def test_a_slowloris_handshake_is_closed_at_the_handshake_deadline(ingest: Ingest) -> None:
    before = limit_hits(ingest, "rtmp_handshake_deadline")
    s = connect(ingest.rtmp_port)
    sent = 0
    try:
        # One byte a second: a whole C0+C1 would take 25 minutes, and every byte is "activity".
        for _ in range(int(HANDSHAKE_S) + 6):
            try:
                s.send(b"\x03" if sent == 0 else b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if closed_by_peer(s, 1.0):
                break
        else:
            pytest.fail(f"still open after {sent} bytes at 1 byte/s")
    finally:
        s.close()
    assert sent < 1537, "the client never got to finish the handshake"
    wait_for(lambda: limit_hits(ingest, "rtmp_handshake_deadline") > before, 5,
             what="the handshake deadline counted")


def test_a_client_that_never_publishes_is_closed_at_the_publish_deadline(ingest: Ingest) -> None:
    before = limit_hits(ingest, "rtmp_publish_deadline")
    s = connect(ingest.rtmp_port)
    try:
        handshake(s)
        # Bytes keep coming, a slice of one audio message at a time, and never a publish:
        # the deadline is not an idle timer that any byte resets.
        s.sendall(bytes([0x04]) + (0).to_bytes(3, "big") + (4000).to_bytes(3, "big")
                  + bytes([8]) + (1).to_bytes(4, "little"))
        for i in range(int(PUBLISH_S / 0.25) + 24):
            try:
                s.send(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_by_peer(s, 0.25):
                break
        else:
            pytest.fail("a connection without publish stayed open")
        assert i * 0.25 < 4000, "closed by the deadline, not by the message ending"
    finally:
        s.close()
    wait_for(lambda: limit_hits(ingest, "rtmp_publish_deadline") > before, 5,
             what="the publish deadline counted")


def test_a_publisher_that_falls_silent_is_let_go_at_the_idle_deadline(
        ingest: Ingest, tmp_path: Path) -> None:
    room = ingest.create_room("gone-quiet")
    before = limit_hits(ingest, "rtmp_idle_deadline")
    pub = ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), 440, log=tmp_path / "pub.log")
    try:
        wait_for(lambda: ingest.room("gone-quiet")["speakers"], 15, what="the publisher joined")
        # Its machine goes away: no more bytes and no FIN (stopped, by the pid started here).
        pub.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: not ingest.room("gone-quiet")["speakers"], IDLE_S + 10,
                 what="the silent publisher let go")
        assert time.monotonic() - stopped >= IDLE_S - 0.5, "let go before its deadline"
    finally:
        pub.send_signal(signal.SIGCONT)
        pub.kill()
        pub.wait(10)
    wait_for(lambda: limit_hits(ingest, "rtmp_idle_deadline") > before, 5,
             what="the idle deadline counted")


def test_a_flood_before_authentication_is_closed_at_the_byte_cap(ingest: Ingest) -> None:
    before = limit_hits(ingest, "rtmp_preauth_bytes")
    s = connect(ingest.rtmp_port)
    s.settimeout(5)
    sent = 0
    # One endless video message (never buffered by the decoder) in 128-byte chunks.
    flood = (bytes([0x06]) + (0).to_bytes(3, "big") + (0xFFFFFF).to_bytes(3, "big")
             + bytes([9]) + (1).to_bytes(4, "little") + bytes(128))
    more = (bytes([0xC6]) + bytes(128)) * 64
    try:
        handshake(s)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            s.sendall(flood)
            sent += len(flood)
            while sent < 64 * 1024 * 1024:
                s.sendall(more)
                sent += len(more)
    finally:
        s.close()
    # What we managed to send includes both sockets' buffers; the server read far less.
    assert sent < 16 * 1024 * 1024
    wait_for(lambda: limit_hits(ingest, "rtmp_preauth_bytes") > before, 5,
             what="the pre-auth cap counted")


def test_one_address_gets_at_most_its_share_while_another_still_connects(
        ingest: Ingest) -> None:
    before = limit_hits(ingest, "rtmp_connections_per_address")
    held = [connect(ingest.rtmp_port) for _ in range(PER_ADDRESS)]
    try:
        extra = connect(ingest.rtmp_port)
        try:
            assert closed_by_peer(extra, HANDSHAKE_S * 0.8), "the extra connection was kept"
        finally:
            extra.close()
        assert limit_hits(ingest, "rtmp_connections_per_address") == before + 1
        other = connect(ingest.rtmp_port, source="127.0.0.2")
        try:
            handshake(other)  # served: the limit is per address
        finally:
            other.close()
        assert all(not closed_by_peer(s, 0.0) for s in held), "held connections were cut"
    finally:
        for s in held:
            s.close()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_ffmpeg_still_publishes_with_every_limit_in_force(ingest: Ingest, tmp_path: Path) -> None:
    room = ingest.create_room("limits-ok")
    proc = ffmpeg_publish(ingest.rtmp_url(room["stream_key"]), 660, seconds=20,
                          log=tmp_path / "ffmpeg.log")
    try:
        wait_for(lambda: ingest.room("limits-ok")["speakers"], 15, what="ffmpeg speaking")
        # Past the publish deadline and past the pre-auth cap many times over: still on.
        time.sleep(PUBLISH_S + 1.0)
        assert proc.poll() is None, (tmp_path / "ffmpeg.log").read_text()
        assert ingest.room("limits-ok")["speakers"], "the publisher was dropped"
    finally:
        proc.terminate()
        proc.wait(10)


def test_bodies_over_the_bound_get_413_on_every_route(ingest: Ingest) -> None:
    big = b"x" * 70_000

    def chunked() -> Iterator[bytes]:  # no Content-Length: the bound must hold while streaming
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    auth = {"Authorization": f"Bearer {ingest.token}"}
    ingest.create_room("limits-body")
    # Every route that reads a body (the others answer without reading one). FastAPI turns
    # an error while reading a JSON body into 400: the bound must still say 413.
    with httpx.Client(base_url=ingest.control, timeout=10) as c:
        for method, path, headers in (
                ("POST", "/rooms", {**auth, "Content-Type": "application/json"}),
                ("POST", "/rooms/limits-body/speakers/x/mute",
                 {**auth, "Content-Type": "application/json"}),
                ("POST", "/whip/limits-body", {"Authorization": "Bearer k",
                                               "Content-Type": "application/sdp"})):
            declared = c.request(method, path, content=big, headers=headers)
            streamed = c.request(method, path, content=chunked(), headers=headers)
            assert (declared.status_code, streamed.status_code) == (413, 413), (method, path)


def test_the_control_api_answers_429_with_retry_after_per_address(ingest: Ingest) -> None:
    before = limit_hits(ingest, "api_rate_per_address")
    statuses: list[int] = []
    retry_after = None
    with httpx.Client(base_url=ingest.control, timeout=10) as c:
        # No token: 401, until this address is over its rate (any client faster than RATE).
        while len(statuses) < 20 * BURST and 429 not in statuses:
            r = c.get("/rooms")
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry_after = r.headers.get("retry-after")
                assert "api_rate_per_address" in r.text
        assert c.get("/healthz").status_code == 200, "health checks are never limited"
    assert 429 in statuses and statuses[0] == 401, statuses
    assert retry_after is not None and int(retry_after) >= 1
    assert limit_hits(ingest, "api_rate_per_address") > before
    # Another address is unaffected.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=ingest.control, timeout=10, transport=transport) as other:
        assert other.get("/rooms").status_code == 401
    time.sleep(BURST / RATE)  # let this address's bucket refill for the tests after


def test_one_token_is_limited_from_every_address(ingest: Ingest) -> None:
    before = limit_hits(ingest, "api_rate_per_token")
    headers = {"Authorization": "Bearer tsk_spent-token-" + os.urandom(4).hex()}
    statuses: list[int] = []
    clients = [httpx.Client(base_url=ingest.control, timeout=10, headers=headers,
                            transport=httpx.HTTPTransport(local_address=f"127.0.0.{i}"))
               for i in (3, 4, 6, 7)]
    body = ""
    try:
        # Each address sends a quarter of the requests: the token runs out long before any
        # address does.
        while len(statuses) < 20 * BURST and 429 not in statuses:
            r = clients[len(statuses) % 4].post("/whip/nope", content=b"v=0",
                                                headers={"Content-Type": "application/sdp"})
            statuses.append(r.status_code)
            body = r.text
    finally:
        for c in clients:
            c.close()
    assert 429 in statuses and "api_rate_per_token" in body, statuses
    assert limit_hits(ingest, "api_rate_per_token") > before


def test_whip_sessions_per_address_are_bounded_and_another_address_still_publishes(
        ingest: Ingest) -> None:
    room = ingest.create_room("limits-whip")
    headers = {"Authorization": f"Bearer {room['stream_key']}",
               "Content-Type": "application/sdp"}

    async def offers(n: int) -> list[str]:
        out = []
        for _ in range(n):
            pc, sdp = await whip_offer(ToneTrack(500))
            await pc.close()
            out.append(sdp)
        return out

    first, second, third = asyncio.run(offers(3))
    here = httpx.Client(base_url=ingest.control, timeout=20)
    there = httpx.Client(base_url=ingest.control, timeout=20,
                         transport=httpx.HTTPTransport(local_address="127.0.0.5"))
    created = []
    try:
        a = here.post("/whip/limits-whip", content=first, headers=headers)
        assert a.status_code == 201, a.text
        created.append((here, a.headers["location"]))
        b = here.post("/whip/limits-whip", content=second, headers=headers)
        assert b.status_code == 429 and int(b.headers["retry-after"]) >= 1, b.text
        assert "WHIP sessions already" in b.text
        c = there.post("/whip/limits-whip", content=third, headers=headers)
        assert c.status_code == 201, c.text
        created.append((there, c.headers["location"]))
        assert limit_hits(ingest, "whip_sessions_per_address") >= 1
    finally:
        for client, location in created:
            client.delete(location, headers=headers)
        here.close()
        there.close()
