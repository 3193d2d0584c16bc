"""The origin stops for 10 s mid-broadcast: the edge keeps serving and listeners carry on."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.edge.conftest import Node, media_folder, media_path, wait_live
from tests.support.procs import free_port, running

ROOM = "outage"
UPSTREAM_TIMEOUT = 10.0


class Listener(threading.Thread):
    """Follows one media playlist by blocking reloads, the way an LL-HLS player does."""

    def __init__(self, base: str, playlist: str) -> None:
        super().__init__(daemon=True)
        self.base, self.playlist = base, playlist
        self.stop = threading.Event()
        self.log: list[tuple[float, float, int, int]] = []  # (at, elapsed, status, last msn)
        self.errors: list[str] = []

    def run(self) -> None:
        folder = self.playlist.rsplit("/", 1)[0]
        target = self.playlist
        last = -1
        with httpx.Client(base_url=self.base, timeout=UPSTREAM_TIMEOUT + 5) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.get(target)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    time.sleep(0.5)
                    continue
                elapsed = time.monotonic() - t0
                hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="([^"/]+)/p(\d+)\.(\d+)\.m4s"',
                                 r.text)
                if r.status_code == 200 and hint:
                    epoch, msn, part = hint[1], int(hint[2]), int(hint[3])
                    if msn > last:
                        last = msn
                        c.get(f"{folder}/{epoch}/p{msn}.0.m4s" if part
                              else f"{folder}/{epoch}/s{msn - 1}.m4s")
                    advanced = f"_HLS_msn={msn}&_HLS_part={part}" not in target
                    target = f"{self.playlist}?_HLS_msn={msn}&_HLS_part={part}"
                    if not advanced:
                        time.sleep(0.5)  # stale answer: poll gently, as hls.js does
                else:
                    time.sleep(0.5)
                self.log.append((t0, elapsed, r.status_code, last))


def test_edge_rides_out_a_10_second_origin_outage(
        tmp_path: Path, edge_factory: Callable[..., Node]) -> None:
    data = tmp_path / "data"
    port = free_port()
    origin_args = ["origin", "--port", str(port), "--data", str(data)]
    health = f"http://127.0.0.1:{port}/healthz"
    origin_url = f"http://127.0.0.1:{port}"
    with running(["ingest", "--room", ROOM, "--source", "tone", "--data", str(data)],
                 tmp_path / "ingest.log", None):
        with running(origin_args, tmp_path / "origin1.log", health):
            wait_live(origin_url, ROOM)
            edge = edge_factory(origin_url)
            playlist = media_path(edge.url, ROOM)
            folder = media_folder(edge.url, playlist)
            init = httpx.get(f"{edge.url}{folder}/init.mp4").content
            listener = Listener(edge.url, playlist)
            listener.start()
            time.sleep(3)
        # The origin is gone.
        down_at = time.monotonic()
        msn_at_cut = listener.log[-1][3]
        assert msn_at_cut > 0
        served = []
        while time.monotonic() - down_at < 10:
            t0 = time.monotonic()
            served.append((httpx.get(f"{edge.url}{folder}/init.mp4", timeout=15).content == init,
                           httpx.get(edge.url + playlist, timeout=15).status_code,
                           time.monotonic() - t0))
            time.sleep(0.5)
        assert all(ok for ok, _, _ in served), "cached init not served during the outage"
        assert {status for _, status, _ in served} == {200}, "no last good playlist"
        assert max(t for _, _, t in served) < 1.0, "requests waited on a dead origin"
        breaker = httpx.get(f"{edge.url}/metrics").text
        assert "townsquare_edge_stale_served_total" in breaker
        with running(origin_args, tmp_path / "origin2.log", health):
            up_at = time.monotonic()
            deadline = up_at + 20
            while time.monotonic() < deadline and listener.log[-1][3] <= msn_at_cut + 1:
                time.sleep(0.2)
            listener.stop.set()
            listener.join(UPSTREAM_TIMEOUT + 5)
    resumed = [entry for entry in listener.log if entry[0] > up_at and entry[3] > msn_at_cut + 1]
    assert resumed, f"listener never resumed: {listener.log[-5:]} {listener.errors[-3:]}"
    assert resumed[0][0] - up_at < 12, "listener took too long to resume"
    assert not listener.errors, listener.errors[:3]
    assert max(elapsed for _, elapsed, _, _ in listener.log) < UPSTREAM_TIMEOUT + 1
