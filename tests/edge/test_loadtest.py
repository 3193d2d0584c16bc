"""`townsquare loadtest` at a tiny size against a real origin and edge: the listeners it
simulates behave like LL-HLS players, and its summary says what they received."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loadtest.http import Connection, HttpError
from loadtest.playlist import SHARED_VIEWS, read_live, read_shared
from tests.edge.conftest import ROOM, Node, origin_requests

PLAYLIST = b"""#EXTM3U
#EXT-X-TARGETDURATION:2
#EXT-X-PART-INF:PART-TARGET=0.24
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T10:00:00.000Z
#EXT-X-PART:DURATION=0.2,URI="e1-abcdef/p10.0.m4s"
#EXT-X-PART:DURATION=0.2,URI="e1-abcdef/p10.1.m4s"
#EXTINF:0.4,
e1-abcdef/s10.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T10:00:00.400Z
#EXT-X-PART:DURATION=0.2,URI="e1-abcdef/p11.0.m4s"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="e1-abcdef/p11.1.m4s"
"""


def test_a_listener_reads_part_capture_times_and_the_next_hint_from_a_playlist() -> None:
    view = read_live(PLAYLIST)
    base = datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp()
    assert view.parts["e1-abcdef/p10.1.m4s"] == (base + 0.2, 0.2)
    assert view.parts["e1-abcdef/p11.0.m4s"] == (base + 0.4, 0.2)
    assert (view.hint, view.hint_msn, view.hint_part) == ("e1-abcdef/p11.1.m4s", 11, 1)
    assert view.part_target == 0.24 and not view.ended


def test_listeners_sent_the_same_playlist_text_share_one_read_of_it() -> None:
    first = read_shared(bytes(PLAYLIST))
    assert read_shared(bytes(bytearray(PLAYLIST))) is first  # equal bytes, another object
    assert read_shared(PLAYLIST.replace(b"p11.1", b"p11.2")) is not first
    assert read_shared.cache_info().maxsize == SHARED_VIEWS


async def test_a_request_that_is_never_answered_times_out_and_drops_its_connection() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = Connection("127.0.0.1", port, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            await conn.get("/live/x/master.m3u8")
        assert caught.value.kind == "timeout"
        assert 0.3 <= time.monotonic() - started < 5
        assert conn._proto is None  # the next request opens a new connection
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_request_cancelled_mid_way_leaves_its_late_answer_to_no_one() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                target = head.split(b" ")[1]
                await asyncio.sleep(0.3)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(target), target))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(slow_echo, "127.0.0.1", 0)
    conn = Connection("127.0.0.1", server.sockets[0].getsockname()[1], timeout=5)
    try:
        first = asyncio.create_task(conn.get("/first"))
        await asyncio.sleep(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        response = await conn.get("/second")
        assert bytes(response.body) == b"/second"
    finally:
        conn.close()
        server.close()
        await server.wait_closed()


def test_loadtest_listeners_block_per_part_and_report_delays(edge: Node, origin: Node,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    before = origin_requests(origin.url)
    run = subprocess.run(
        [sys.executable, "-m", "townsquare", "loadtest", "--url",
         f"{edge.url}/live/{ROOM}/master.m3u8", "--listeners", "20", "--ramp", "1",
         "--duration", "4", "--processes", "2", "--canary", "2", "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(out.read_text())
    after = origin_requests(origin.url)
    print({k: summary[k] for k in ("requests", "errors", "part_delay_s", "time_to_first_part_s",
                                  "client_cpu", "requests_per_s_steady_median")})
    assert summary["errors"] == {}, summary["errors"]
    req = summary["requests"]
    # Every listener loaded the master and one playlist, then one blocking reload per part.
    assert req["master"] == 20 and req["playlist"] >= 20
    assert req["blocking"] >= 20 * 5 and req["part"] >= 20 * 5
    assert summary["parts"] >= 20 * 5
    assert summary["part_delay_s"]["count"] >= 20 * 4
    assert summary["time_to_first_part_s"]["count"] == 20
    # Listeners of a process sent the same playlist text read it once between them.
    assert 0 < summary["playlists_scanned"] < req["playlist"] + req["blocking"], summary
    assert summary["canary"]["part_delay_s"]["count"] > 0
    assert {v["group"] for v in summary["client_cpu"].values()} == {"main", "canary"}
    # The edge coalesced them: the origin saw far fewer requests than the listeners made.
    made = sum(req.values())
    upstream = sum(after.values()) - sum(before.values())
    assert upstream < made / 4, (upstream, made)


def test_loadtest_refuses_a_url_that_is_not_a_playlist() -> None:
    run = subprocess.run([sys.executable, "-m", "townsquare", "loadtest", "--url",
                          "ftp://example/x", "--quiet"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode != 0 and "multivariant playlist" in run.stderr
