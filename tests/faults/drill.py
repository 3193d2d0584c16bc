"""Pieces of the fault drills: the stack as separate processes, a speaker that reconnects as OBS
does, and listeners in Chromium whose playheads are watched while processes are killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import Service, free_port, wait_http

TOKEN = "drill-admin-token-0123456789"
ROOM = "drill"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PLAIN_HLS = """<!doctype html><html><body><audio id="a"></audio>
<script src="/static/hls.min.js"></script>
<script>
  // hls.js with its default settings, as a site that embeds it would use it.
  window.fatal = null;
  const a = document.getElementById("a");
  const h = window.h = new Hls();
  h.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.fatal = d.details; });
  h.loadSource("/live/ROOM/master.m3u8");
  h.attachMedia(a);
  a.play();
</script></body></html>"""


class Stack:
    """`townsquare ingest` (control API, RTMP, packager, origin) and an edge, as separate
    processes on fixed ports, so either can be killed and started again in place."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = {"TOWNSQUARE_ADMIN_TOKEN": TOKEN, **(env or {})}
        self.control, self.origin_port, self.rtmp, self.edge_port = (free_port() for _ in range(4))
        self.ingest: Service | None = None
        self.edge: Service | None = None
        self.restarts = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def start_ingest(self) -> float:
        """Start the ingest process; returns the moment it answered its health check."""
        self.restarts += 1
        args = ["ingest", "--data", str(self.tmp / "data"), "--control-port", str(self.control),
                "--origin-port", str(self.origin_port), "--rtmp-port", str(self.rtmp)]
        self.ingest = Service(args, self.tmp / f"ingest-{self.restarts}.log", self.env)
        wait_http(f"{self.origin}/healthz", 60, self.ingest.proc)
        wait_http(f"{self.api}/healthz", 60, self.ingest.proc)
        return time.monotonic()

    def start_edge(self) -> None:
        args = ["edge", "--upstream", self.origin, "--port", str(self.edge_port)]
        self.edge = Service(args, self.tmp / f"edge-{time.monotonic():.0f}.log")
        wait_http(f"{self.edge_url}/healthz", 30, self.edge.proc)

    @staticmethod
    def kill(svc: Service | None) -> None:
        """kill -9, by the pid this test started."""
        assert svc is not None and svc.proc.pid > 0
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)

    def create_room(self) -> str:
        r = httpx.post(f"{self.api}/rooms", json={"name": ROOM},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 201, r.text
        return str(r.json()["rtmp_publish_url"])

    def room(self) -> dict[str, Any]:
        r = httpx.get(f"{self.api}/rooms/{ROOM}", headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def end_room(self) -> None:
        r = httpx.post(f"{self.api}/rooms/{ROOM}/end",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 200, r.text

    def stop(self) -> None:
        for svc in (self.ingest, self.edge):
            if svc is not None:
                svc.stop()


class Speaker(threading.Thread):
    """ffmpeg publishing a tone (440 Hz unless told) over RTMP, started again a second after
    it drops, as OBS reconnects on its own."""

    def __init__(self, url: str, log: Path, freq: int = 440) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.freq = freq
        self.log = log
        self.halt = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.connects = 0

    def run(self) -> None:
        with open(self.log, "ab") as out:
            while not self.halt.is_set():
                self.connects += 1
                self.proc = subprocess.Popen(
                    ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-f",
                     "lavfi", "-i", f"sine=frequency={self.freq}:sample_rate=48000", "-c:a", "aac",
                     "-b:a", "96k", "-f", "flv", self.url],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                self.proc.wait()
                self.halt.wait(1.0)

    def stop(self) -> None:
        self.halt.set()
        proc = self.proc
        if proc is not None and proc.poll() is None and proc.pid > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        self.join(15)


class FfmpegListener:
    """The ffmpeg CLI as a classic HLS player: it reads the room's master through the edge
    and writes what it hears to a WAV file whose growth shows it is still playing."""

    BYTES_PER_SECOND = 48_000 * 2 * 2  # s16 stereo

    def __init__(self, edge: str, tmp: Path) -> None:
        self.out = tmp / "ffmpeg-listener.wav"
        self.log = tmp / "ffmpeg-listener.log"
        self.url = f"{edge}/live/{ROOM}/master.m3u8"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FfmpegListener:
        wait_http(self.url, 45)  # the room is announced once it has two whole segments
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-i", self.url,
                 "-map", "0:a:0", "-ar", "48000", "-ac", "2", "-c:a", "pcm_s16le", "-y",
                 str(self.out)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def seconds(self) -> float:
        """Audio written so far."""
        return max(0, self.out.stat().st_size - 44) / self.BYTES_PER_SECOND if self.out.exists() \
            else 0.0

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None and proc.pid > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


# Installed in a listener page: its playhead, readyState and buffered ranges every 0.1 s,
# for a drill's failure message (the player's side of a stall the servers did not cause).
BUFFER_SAMPLER = """() => { const a = document.querySelector('audio'); window.tsBuffer = [];
  setInterval(() => {
    const b = [];
    for (let i = 0; i < a.buffered.length; i++)
      b.push(a.buffered.start(i).toFixed(3) + '-' + a.buffered.end(i).toFixed(3));
    window.tsBuffer.push([Date.now() / 1000, a.currentTime.toFixed(3), a.readyState, b.join(' ')]);
    if (window.tsBuffer.length > 1200) window.tsBuffer.shift();
  }, 100); }"""


def buffer_story(page: Any, since_wall: float, until: float = 15.0) -> list[str]:
    """What `BUFFER_SAMPLER` saw from a second before `since_wall` (wall clock) to `until`
    seconds after it: a line whenever the playhead stops or moves again, readyState or the
    number of buffered ranges changes, and at least one a second."""
    lines: list[str] = []
    prev_ct, prev_key, last_line = None, None, -1e9
    for t, ct, ready, ranges in page.evaluate("window.tsBuffer || []"):
        at = t - since_wall
        if not -1.0 <= at <= until:
            continue
        key = (ct == prev_ct, ready, ranges.count(" "))
        if key != prev_key or at - last_line >= 1.0:
            still = " (still)" if ct == prev_ct else ""
            lines.append(f"{at:+.2f} t={ct}{still} ready={ready} buffered={ranges}")
            last_line = at
        prev_ct, prev_key = ct, key
    return lines


@dataclass
class Listeners:
    """Pages in one Chromium whose audio playheads are sampled from the test's thread."""

    pages: dict[str, Any]
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        got = {name: float(p.evaluate("document.querySelector('audio').currentTime"))
               for name, p in self.pages.items()}
        self.samples.append((now, got))
        return got

    def watch(self, seconds: float, interval: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(interval)

    def wait_playing(self, timeout: float, advance: float = 1.0) -> dict[str, float]:
        """Until every page's playhead has advanced `advance` s; returns when each started."""
        start = self.sample()
        first_move: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.sample()
            t = self.samples[-1][0]
            for name, ct in now.items():
                if name not in first_move and ct > start[name] + 0.05:
                    first_move[name] = t
            if all(now[n] - start[n] >= advance for n in now):
                return first_move
            time.sleep(0.1)
        raise AssertionError(f"not playing within {timeout}s: {self.samples[-5:]}")

    def state(self, name: str, want: str = "playing", timeout: float = 10.0) -> str:
        """The listener page's own state once it says `want` (or whatever it says at the
        timeout): it turns "playing" at the watchdog's next look with audio buffered."""
        deadline = time.monotonic() + timeout
        while True:
            got = str(self.pages[name].evaluate("window.townsquare.state"))
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def longest_stall(self, name: str, since: float) -> float:
        """The longest time the page's playhead stood still after `since`."""
        start, end = self.stall(name, since)
        return end - start

    def stall(self, name: str, since: float) -> tuple[float, float]:
        """(first still sample, first moving sample after it) of the longest stall."""
        worst, still_since, last, prev_t = (0.0, 0.0), None, None, since
        for t, got in self.samples:
            if t < since:
                continue
            ct = got[name]
            if last is not None and ct <= last + 0.01:
                still_since = still_since if still_since is not None else prev_t
            elif still_since is not None:
                if t - still_since > worst[1] - worst[0]:
                    worst = (still_since, t)
                still_since = None
            last, prev_t = ct, t
        return worst


def playlist_position(base: str, room: str = ROOM, rendition: str = "aac96") -> tuple[str, int]:
    """(text, last media sequence number listed) of a room's media playlist."""
    text = httpx.get(f"{base}/live/{room}/{rendition}/live.m3u8", timeout=10).text
    seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)[1])  # type: ignore[index]
    segments = len([ln for ln in text.splitlines() if ln and not ln.startswith("#")])
    return text, seq + segments - 1


def rooms_told(logs: dict[str, str]) -> str:
    """What each node's log (by name) says of rooms, speakers, relays and leases, and of its
    event loop's stalls: the story of a failed drill, which CI prints and then throws away
    with the logs."""
    told = []
    for name, output in logs.items():
        lines = [line for line in output.splitlines()
                 if ("townsquare.ingest." in line or "townsquare.loop:" in line)
                 and " GET " not in line
                 or line.startswith(("Traceback", "  File", "packager.", "ingest."))]
        told.append(f"--- {name}\n" + "\n".join(lines[-60:]))
    return "\n".join(told)


class ClusterNode:
    """One `townsquare ingest` node of a cluster (its database and store in `env`), answering
    once this returns. Its process runs with `env` on top of the node's own settings."""

    def __init__(self, n: int, tmp: Path, env: dict[str, str]) -> None:
        self.id = f"node-{n}"
        self.control, self.origin, self.rtmp = free_port(), free_port(), free_port()
        env = {**env, "TOWNSQUARE_NODE_ID": self.id,
               "TOWNSQUARE_STORE_SPILL_DIR": str(tmp / f"spill-{n}")}
        args = ["ingest", "--data", str(tmp / "data"), "--control-port", str(self.control),
                "--origin-port", str(self.origin), "--rtmp-port", str(self.rtmp)]
        self.log = tmp / f"{self.id}.log"
        self.svc = Service(args, self.log, env)
        wait_http(f"{self.api}/healthz", 60, self.svc.proc)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def room(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api}/rooms/{ROOM}", headers=AUTH, timeout=10).json())

    def output(self) -> str:
        return self.svc.output()
