"""Mouth-to-ear latency, on demand: `python -m tests.bench.latency` (results/latency.json).

A marker once a second (`markers`: a 100 ms tone whose frequency numbers it) goes into a
room, and hls.js plays the room through a real edge in headless Chromium. The markers are
found in the audio the listener's page actually produces: its <audio> element is routed
through Web Audio (MediaElementSource → an AudioWorklet → the speakers), and each onset is
dated at the speakers with the context's own clock pairing (getOutputTimestamp). The time
from a marker entering to that moment is its mouth-to-ear latency.

Two ways in, one after the other, SECONDS each:
- **rtmp**: the ffmpeg CLI renders the markers (lavfi `aevalsrc`, `-re`, AAC over RTMP).
  The same process writes the raw samples to a pipe as its real-time reader releases them,
  so marker k entered at T0 + k s, T0 being the release time of sample 0 (the least delayed
  of all blocks read from the pipe gives it to a millisecond or so).
- **whip**: the project's broadcaster page publishes Chromium's fake microphone, which loops
  a WAV of the same markers; the same worklet on the page's microphone stream dates each
  marker when the page's audio graph takes it in (the fake device's own capture buffer, a
  few ms, is not counted).

Two listeners on each: the edge's own listener page (`/listen/ROOM`, the project's hls.js
settings, best AAC rendition), and hls.js with every default (`new Hls()`, the master
playlist, low-latency mode on). Beside each: the room's PART-HOLD-BACK, the target latency
hls.js derives from it, and the latency hls.js reports (playlist-based) and the PDT latency
(now − the playhead's PROGRAM-DATE-TIME), which start at the server's capture clock and so
cannot see the way in. The page clocks are tied to the benchmark's wall clock
(time.time()) by round trips before and after.

Playhead stalls (>300 ms) are listed with the media position they stood at; markers lost
while a stall was under way, and markers later than the p99 target once one had begun, are
counted apart, and the latency before the first stall is given on its own.

hls.js with every default keeps the latency it starts with (it never speeds up), and where it
starts depends on the moment it joins: one join is one draw. So after the window, that
listener joins again REJOINS times on a fresh page, each join heard for REJOIN_SECONDS after
the same warm-up, and its figures are also given over every join: each join's p50 and their
median, and p50 and p99 over as many markers from each join.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.bench import markers
from tests.bench.markers import Marker
from tests.ingest.support import FFMPEG, Ingest, ingest_service
from tests.support.browser import chromium
from tests.support.procs import (
    Service,
    cpu_seconds,
    free_port,
    process_tree,
    running,
    wait_http,
)

RESULTS = Path(__file__).parent / "results" / "latency.json"
STATIC = Path(__file__).parent / "static"
SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "60"))
WARMUP = 8.0  # playing this long before the window opens: hls.js settles at its target
GRACE = 4.0  # listening on after the window, for the last markers sent in it
LONGEST_GRACE = 20.0  # … longer for a listener that fell behind, up to this
REJOINS = int(os.environ.get("BENCH_LATENCY_REJOINS", "4"))
REJOIN_SECONDS = float(os.environ.get("BENCH_LATENCY_REJOIN_SECONDS", "15"))
# Listeners whose latency is fixed by their join (see the module docstring).
REJOINING = ("hlsjs-defaults",)
TARGET_P50, TARGET_P99 = 1.0, 1.3
RATE = 48_000
FRAME = 1024  # samples per block of ffmpeg's lavfi source (`n=`)

DEFAULTS_PAGE = """<!doctype html><html><body><audio></audio>
<script src="/static/hls.min.js"></script>
<script>
  // hls.js with every default (low-latency mode is one), given the room's master playlist.
  const errors = window.errors = [];
  const a = document.querySelector("audio");
  const h = window.h = new Hls();
  h.on(Hls.Events.ERROR, (_, d) => errors.push((d.fatal ? "fatal " : "") + d.details));
  h.loadSource("/live/ROOM/master.m3u8");
  h.attachMedia(a);
  h.on(Hls.Events.MANIFEST_PARSED, () => a.play().catch((e) => errors.push(String(e))));
</script></body></html>"""

# name → (how the page is opened, the expression naming its Hls instance, its errors)
LISTENERS = {
    "listen-page": ("listen", "window.townsquare.hls", "window.townsquare.errors"),
    "hlsjs-defaults": ("defaults", "window.h", "window.errors"),
}


# --- the clock shared by pages and the benchmark ------------------------------------------

def page_offset(page: Any) -> tuple[float, float]:
    """(page clock − time.time(), uncertainty) in seconds, from the quickest of a few round
    trips; the page clock is performance.timeOrigin + performance.now()."""
    best: tuple[float, float] | None = None
    for _ in range(7):
        before = time.time()
        page_ms = float(page.evaluate("performance.timeOrigin + performance.now()"))
        after = time.time()
        if best is None or after - before < best[1]:
            best = (page_ms / 1000 - (before + after) / 2, after - before)
    assert best is not None
    return best[0], best[1] / 2


class Ear:
    """The marker-onsets worklet on one page's audio (its <audio> element, or the
    broadcaster page's microphone stream); what it found, on the benchmark's clock."""

    def __init__(self, page: Any, source: str, hls: str | None = None,
                 errors: str | None = None) -> None:
        self.page = page
        self.errors_expr = errors
        self.audio = page.evaluate((STATIC / "ear.js").read_text(), {
            "code": (STATIC / "marker-onsets.js").read_text(), "source": source, "hls": hls})
        self.offset, self.offset_error = page_offset(page)
        self.heard: list[Marker] = []
        self.unidentified = 0
        self.refs: list[dict[str, Any]] = []
        self.stalls: list[tuple[float, float, float]] = []  # (from, to, media position)
        self.warmup_stalls: list[tuple[float, float, float]] = []

    def _time(self, page_ms: float) -> float:
        return page_ms / 1000 - self.offset

    def collect(self) -> None:
        got = self.page.evaluate("[ear.onsets.splice(0), ear.refs.splice(0), ear.stalls.splice(0)]")
        onsets, refs, stalls = got
        for o in onsets:
            index = markers.identify(np.asarray(o["samples"], dtype=np.float64), o["rate"])
            if index is None:
                self.unidentified += 1
            else:
                self.heard.append(Marker(self._time(o["at"]), index))
        for r in refs:
            self.refs.append({**r, "at": self._time(r["at"])})
        self.stalls += [(self._time(s["from"]), self._time(s["to"]), float(s["position"]))
                        for s in stalls]

    def playhead(self) -> float:
        return float(self.page.evaluate("document.querySelector('audio').currentTime"))

    def errors(self) -> list[str]:
        return list(self.page.evaluate(self.errors_expr)) if self.errors_expr else []

    def clock_drift(self) -> float:
        """How far the page clock moved against time.time() since the ear was put on."""
        return page_offset(self.page)[0] - self.offset


# --- the two ways in -------------------------------------------------------------------

class FfmpegMarkers:
    """The ffmpeg CLI sending the markers over RTMP in real time, with the raw samples on
    its stdout as they are released (T0: when sample 0 was)."""

    def __init__(self, url: str, log: Path) -> None:
        source = f"aevalsrc={markers.lavfi_expression()}:s={RATE}:c=mono:n={FRAME}"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
                 "-f", "lavfi", "-i", source,
                 "-map", "0:a", "-c:a", "aac", "-b:a", "128k", "-f", "flv", url,
                 "-map", "0:a", "-c:a", "pcm_s16le", "-f", "s16le", "-flush_packets", "1",
                 "pipe:1"],
                stdout=subprocess.PIPE, stderr=out, start_new_session=True)
        self.t0 = math.inf
        self._bounds: list[float] = []  # one upper bound of T0 per read
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd, samples = self.proc.stdout.fileno(), 0
        while chunk := os.read(fd, 1 << 16):
            now = time.time()
            samples += len(chunk) // 2
            # The newest whole block started at samples − FRAME; -re released it no earlier
            # than T0 + its start, so each read bounds T0 from above.
            bound = now - (samples - FRAME) / RATE
            self.t0 = min(self.t0, bound)
            if len(self._bounds) < 100_000:
                self._bounds.append(bound)

    def sent(self, start: float, end: float) -> list[Marker]:
        first, last = max(0, math.ceil(start - self.t0)), math.floor(end - self.t0)
        return [Marker(self.t0 + k, k % markers.CYCLE) for k in range(first, last + 1)]

    def report(self) -> dict[str, Any]:
        """How late blocks came out of the pipe after their due time (T0 + start): the
        pacing jitter of `-re` and of this reader, which T0 (the least of them) is free of."""
        late = sorted(b - self.t0 for b in self._bounds)
        return {"pipe_reads": len(late),
                "block_release_delay_ms": markers.quantiles([v * 1000 for v in late])}

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.pid > 0:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self._reader.join(5)


class BrowserMarkers:
    """The broadcaster page publishing Chromium's fake microphone (the markers' WAV) by WHIP;
    an ear on its microphone stream dates each marker as it goes in."""

    def __init__(self, browser: Any, room: dict[str, Any]) -> None:
        self.page = browser.new_context().new_page()
        self.page.goto(room["broadcast_page_url"])
        self.page.fill("#key", room["stream_key"])
        self.page.click("#start")
        self.page.wait_for_function(
            "document.getElementById('state').textContent === 'connected'", timeout=30_000)
        self.ear = Ear(self.page, "stream")
        self.filled = 0

    def sent(self, start: float, end: float) -> list[Marker]:
        """The markers found in the microphone stream, with any the detector missed put
        back: the fake device plays the file's regular train at its own steady pace."""
        self.ear.collect()
        train, self.filled = markers.fill_gaps(sorted(self.ear.heard, key=lambda m: m.at))
        return [m for m in train if start <= m.at <= end]

    def report(self) -> dict[str, Any]:
        return {"onsets_found": len(self.ear.heard), "onsets_not_markers": self.ear.unidentified,
                "markers_put_back": self.filled}

    def stop(self) -> None:
        self.page.click("#stop")
        self.page.context.close()


# --- one way in, measured ----------------------------------------------------------------

def open_listener(browser: Any, edge: str, room: str, name: str) -> Ear:
    how, hls, errors = LISTENERS[name]
    page = browser.new_context().new_page()  # a cache of its own, as another listener
    if how == "listen":
        page.goto(f"{edge}/listen/{room}")
    else:
        page.route(f"{edge}/bench-defaults", lambda route: route.fulfill(
            body=DEFAULTS_PAGE.replace("ROOM", room), content_type="text/html"))
        page.goto(f"{edge}/bench-defaults")
    return Ear(page, "element", hls, errors)


def wait_playing(ears: dict[str, Ear], timeout: float = 45.0) -> None:
    start = {name: ear.playhead() for name, ear in ears.items()}
    deadline = time.monotonic() + timeout
    while any(ear.playhead() < start[name] + 1.0 for name, ear in ears.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not playing after {timeout:g} s: "
                               f"{ {n: e.errors()[-5:] for n, e in ears.items()} }")
        time.sleep(0.2)


def measure(ears: dict[str, Ear], mouth: FfmpegMarkers | BrowserMarkers,
            seconds: float, warmup: float = WARMUP, grace: float = GRACE,
            segment: float = 1.92) -> dict[str, Any]:
    time.sleep(warmup)
    for ear in ears.values():
        ear.collect()
        ear.heard.clear()  # warm-up onsets are not part of the window
        ear.refs.clear()
        ear.warmup_stalls, ear.stalls = ear.stalls, []
    start = time.time()
    end = start + seconds

    def behind() -> float:
        """How far behind the window's end the slowest listener may still be (its PDT
        latency and a second), so that late markers are heard rather than lost."""
        pdts = [ear.refs[-1]["pdt"] or 0.0 if ear.refs else 0.0 for ear in ears.values()]
        return min(LONGEST_GRACE, max([grace, *(p + 1.0 for p in pdts)]))

    while time.time() < end + grace or time.time() < end + behind():
        time.sleep(1.0)
        for ear in ears.values():
            ear.collect()
    # Markers sent around the window too: what is heard in it may belong to them.
    sent = mouth.sent(start - markers.CYCLE * 2 / 3, end + LONGEST_GRACE)
    return {name: summarize(ear, sent, start, end, grace, segment)
            for name, ear in ears.items()}


def _median(values: list[Any]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def summarize(ear: Ear, every: list[Marker], start: float, end: float, grace: float,
              segment: float) -> dict[str, Any]:
    paired = markers.pair(every, ear.heard)
    sent = [s for s in every if start <= s.at <= end]
    latencies = [paired.latencies[s] for s in sent if s in paired.latencies]
    figures = markers.quantiles(latencies)
    p50 = figures.get("p50", math.inf)
    stalls = [st for st in ear.stalls if st[1] >= start and st[0] <= end + LONGEST_GRACE]
    first_stall = min((a for a, _, _ in stalls), default=math.inf)
    # Before the first stall: the latency the player holds when nothing goes wrong.
    steady = [paired.latencies[s] for s in sent
              if s in paired.latencies and s.at + paired.latencies[s] < first_stall]
    typical = statistics.median(steady) if steady else (p50 if math.isfinite(p50) else 1.0)
    lost = [s for s in sent if s not in paired.latencies]
    late = [s for s in sent if paired.latencies.get(s, 0.0) > TARGET_P99]
    refs = [r for r in ear.refs if start <= r["at"] <= end]
    pdt = _median([r["pdt"] for r in refs])
    levels = sorted({str(r["level"]) for r in refs if r.get("level")})
    return {
        "rendition_played": levels,
        "markers_sent": len(sent),
        "markers_detected": len(latencies),
        "markers_lost": len(lost),
        "markers_late": len(late),  # heard later than the p99 target
        "onsets_not_markers": ear.unidentified,
        "onsets_unpaired": sum(start <= h.at <= end + LONGEST_GRACE for h in paired.unpaired),
        "mouth_to_ear_s": figures,
        "target_p50_s": TARGET_P50,
        "target_p99_s": TARGET_P99,
        "meets_p50": p50 <= TARGET_P50,
        "meets_p99": figures.get("p99", math.inf) <= TARGET_P99,
        "latencies_s": [round(v, 3) for v in latencies],
        # [seconds into the window, latency or null] per sent marker, and onsets heard that
        # belong to none: where a stall or a restart fell, and what it cost.
        "timeline": [[round(s.at - start, 2), round(paired.latencies[s], 3)
                      if s in paired.latencies else None] for s in sent],
        "unpaired_onsets": [[round(h.at - start, 2), h.index] for h in paired.unpaired
                            if start <= h.at <= end + LONGEST_GRACE],
        "reference": {
            "hlsjs_target_latency_s": _median([r["target"] for r in refs]),
            "hlsjs_reported_latency_s": _median([r["latency"] for r in refs]),
            "pdt_latency_s": pdt,
            "mouth_to_ear_minus_pdt_latency_s": (round(p50 - pdt, 3) if pdt is not None
                                                 and math.isfinite(p50) else None),
            "playback_rate_max": max((r["rate"] for r in refs), default=None),
        },
        "stalls": [{"at_s": round(a - start, 2), "seconds": round(b - a, 2),
                    "media_position_s": round(pos, 3),
                    "position_in_segment_s": round(pos % segment, 3) if segment else None} for a, b, pos in stalls],
        "stalls_before_the_window": [round(b - a, 2) for a, b, _ in ear.warmup_stalls],
        "mouth_to_ear_before_first_stall_s": markers.quantiles(steady) if stalls else None,
        # Markers that would have played while the playhead stood still and never did.
        "markers_lost_in_stalls": sum(any(a - 0.5 <= s.at + typical <= b + 0.5
                                          for a, b, _ in stalls) for s in lost),
        # Late markers heard once a stall had begun: the stall's delay, and whatever of it
        # the player kept afterwards.
        "markers_late_after_stalls": sum(s.at + paired.latencies[s] >= first_stall
                                         for s in late),
        "hlsjs_errors": ear.errors()[-20:],
        "page_clock": {"offset_uncertainty_s": round(ear.offset_error, 4),
                       "drift_over_run_s": round(ear.clock_drift(), 4)},
        "audio_context": ear.audio,  # sample rate, base and output latency (s)
    }


# --- processes and their CPUs -------------------------------------------------------------

def _cpus(pid: int) -> str:
    cpus = sorted(os.sched_getaffinity(pid))
    return ",".join(map(str, cpus))


def chromium_pid() -> int:
    """Our Chromium's browser process: a descendant of this process (through Playwright's
    driver) named chromium."""
    for pid in process_tree(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("chrom"):
                return pid
        except OSError:
            continue
    raise RuntimeError("no Chromium process under this one")


class Processes:
    """The processes of a run (each with its process tree), their CPUs and CPU time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = self._now()
        self.started = time.monotonic()

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(process_tree(pid)) for name, pid in self.pids.items()}

    def report(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        after = self._now()
        return {name: {"pid": pid, "cpus": _cpus(pid),
                       "cpu_share": round((after[name] - self.before[name]) / elapsed, 3)}
                for name, pid in self.pids.items()}


# --- the run -------------------------------------------------------------------------------

def room_timing(edge: str, room: str) -> dict[str, float]:
    """PART-HOLD-BACK, PART-TARGET and segment duration of the room's first AAC rendition."""
    master = httpx.get(f"{edge}/live/{room}/master.m3u8", timeout=10).text
    uri = next(ln for ln in master.splitlines() if ln and not ln.startswith("#") and "aac" in ln)
    text = httpx.get(str(httpx.URL(f"{edge}/live/{room}/master.m3u8").join(uri)), timeout=10).text

    def attr(tag: str, name: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(tag))
        return float(line.split(f"{name}=", 1)[1].split(",", 1)[0])

    extinf = [float(ln.split(":", 1)[1].rstrip(",")) for ln in text.splitlines()
              if ln.startswith("#EXTINF:")]
    return {"part_hold_back_s": attr("#EXT-X-SERVER-CONTROL", "PART-HOLD-BACK"),
            "part_target_s": attr("#EXT-X-PART-INF", "PART-TARGET"),
            "segment_s": round(extinf[-1], 3) if extinf else 0.0}


@contextmanager
def stack(work: Path) -> Iterator[tuple[Ingest, str, Service]]:
    """`townsquare ingest` and a `townsquare edge` in front of its origin."""
    with ingest_service(work) as ingest:
        port = free_port()
        with running(["edge", "--upstream", ingest.origin, "--port", str(port)],
                     work / "edge.log", f"http://127.0.0.1:{port}/healthz") as edge:
            yield ingest, f"http://127.0.0.1:{port}", edge


def over_joins(joins: list[dict[str, Any]]) -> dict[str, Any]:
    """One listener's figures over several joins (each a `summarize` result), every join
    weighing the same: the first join's longer window gives only as many markers as the
    shortest join heard (its first ones)."""
    n = min(len(j["latencies_s"]) for j in joins)
    every = [v for j in joins for v in j["latencies_s"][:n]]
    each = [j["mouth_to_ear_s"].get("p50") for j in joins]
    return {
        "joins": len(joins),
        "markers_per_join": n,
        "p50_of_each_s": each,
        "median_of_join_p50s_s": _median(each),
        "p99_of_each_s": [j["mouth_to_ear_s"].get("p99") for j in joins],
        "hlsjs_latency_of_each_s": [j["reference"]["hlsjs_reported_latency_s"] for j in joins],
        "mouth_to_ear_s": markers.quantiles(every),
        "markers_sent": sum(j["markers_sent"] for j in joins),
        "markers_detected": len(every),
        "stalls": sum(len(j["stalls"]) for j in joins),
        "latencies_s": every,
    }


def _joins_row(joins: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's columns for a listener heard over several joins (none otherwise)."""
    if joins is None:
        return {}
    q = joins["mouth_to_ear_s"]
    return {"joins": joins["joins"], "p50_of_each_join": joins["p50_of_each_s"],
            "median_join_p50": joins["median_of_join_p50s_s"],
            **{f"{k}_over_joins": q.get(k) for k in ("p50", "p99", "max")},
            "meets_over_joins": _meets(q)}


def _meets(quantiles: dict[str, float]) -> bool:
    return (quantiles.get("p50", math.inf) <= TARGET_P50
            and quantiles.get("p99", math.inf) <= TARGET_P99)


def rejoin(browser: Any, edge: str, room: str, name: str, mouth: FfmpegMarkers | BrowserMarkers,
           seconds: float, warmup: float, grace: float, segment: float) -> dict[str, Any]:
    """One more join of listener `name` on a fresh page, heard for `seconds`."""
    ear = open_listener(browser, edge, room, name)
    try:
        wait_playing({name: ear})
        got: dict[str, Any] = measure({name: ear}, mouth, seconds, warmup, grace, segment)[name]
        return got
    finally:
        ear.page.context.close()


def run_path(path: str, ingest: Ingest, edge: str, edge_svc: Service, browser: Any,
             seconds: float, listeners: list[str], work: Path, warmup: float,
             grace: float, rejoins: int = REJOINS, rejoin_seconds: float = REJOIN_SECONDS,
             rejoining: tuple[str, ...] = REJOINING) -> dict[str, Any]:
    name = f"m2e-{path}"
    room = ingest.create_room(name)
    mouth: FfmpegMarkers | BrowserMarkers
    if path == "rtmp":
        mouth = FfmpegMarkers(ingest.rtmp_url(room["stream_key"]), work / "ffmpeg.log")
        how = ("ffmpeg CLI: lavfi aevalsrc markers, -re, AAC 128 kb/s over RTMP; marker k "
               "sent at T0 + k s, T0 from its raw-sample pipe")
    else:
        mouth = BrowserMarkers(browser, room)
        how = ("Chromium's fake microphone (the markers WAV, looped) on the broadcaster "
               "page, WHIP; each marker dated at its onset in the page's microphone stream")
    try:
        wait_http(f"{edge}/live/{name}/master.m3u8", 45)
        timing = room_timing(edge, name)
        pids = {"ingest": ingest.service.proc.pid, "edge": edge_svc.proc.pid,
                "chromium": chromium_pid()}
        if isinstance(mouth, FfmpegMarkers):
            pids["ffmpeg"] = mouth.proc.pid
        procs = Processes(pids)
        ears = {n: open_listener(browser, edge, name, n) for n in listeners}
        wait_playing(ears)
        result = measure(ears, mouth, seconds, warmup, grace, timing["segment_s"])
        cpu = procs.report()
        for ear in ears.values():
            ear.page.context.close()
        for listener in (n for n in rejoining if n in result and rejoins > 0):
            result[listener]["over_joins"] = over_joins([result[listener], *(
                rejoin(browser, edge, name, listener, mouth, rejoin_seconds, warmup, grace,
                       timing["segment_s"]) for _ in range(rejoins))])
    finally:
        mouth.stop()
    for figures in result.values():
        ref, p50 = figures["reference"], figures["mouth_to_ear_s"].get("p50")
        ref["part_hold_back_s"] = timing["part_hold_back_s"]
        ref["mouth_to_ear_p50_over_part_hold_back"] = (
            round(p50 / timing["part_hold_back_s"], 2) if p50 else None)
    return {"mouth": how, "mouth_detection": mouth.report(), "room": timing,
            "listeners": result, "processes": cpu}


def run(seconds: float = SECONDS, paths: tuple[str, ...] = ("rtmp", "whip"),
        listeners: tuple[str, ...] = tuple(LISTENERS), results: Path | None = RESULTS,
        warmup: float = WARMUP, grace: float = GRACE, work: Path | None = None,
        rejoins: int | Mapping[str, int] = REJOINS, rejoin_seconds: float = REJOIN_SECONDS,
        rejoining: tuple[str, ...] = REJOINING) -> dict[str, Any]:
    """`work`: a folder to keep the logs in (a temporary one, removed, by default);
    `rejoining` listeners join `rejoins` more times after the window (or as many as it gives
    each path), `rejoin_seconds` each."""
    per_path = {path: rejoins if isinstance(rejoins, int) else rejoins.get(path, 0)
                for path in paths}
    with ExitStack() as stack_:
        if work is None:
            work = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="latency-")))
        wav = work / "markers.wav"
        markers.write_wav(wav)
        ingest, edge, edge_svc = stack_.enter_context(stack(work))
        browser = stack_.enter_context(chromium(
            fake_mic=True, extra_args=[f"--use-file-for-fake-audio-capture={wav}"]))
        out = {path: run_path(path, ingest, edge, edge_svc, browser, seconds,
                              list(listeners), work, warmup, grace, per_path[path],
                              rejoin_seconds, rejoining) for path in paths}
    summary = [
        {"path": path, "listener": name,
         "detected_of_sent": f"{f['markers_detected']}/{f['markers_sent']}",
         **{k: f["mouth_to_ear_s"].get(k) for k in ("p50", "p99", "max")},
         "target_p50": TARGET_P50, "target_p99": TARGET_P99,
         "meets": _meets(f["mouth_to_ear_s"]),
         "part_hold_back": f["reference"]["part_hold_back_s"],
         "pdt_latency_p50": f["reference"]["pdt_latency_s"],
         "hlsjs_latency_p50": f["reference"]["hlsjs_reported_latency_s"],
         "stalls": len(f["stalls"]),
         "p50_before_first_stall": (f["mouth_to_ear_before_first_stall_s"] or {}).get("p50"),
         "markers_lost_in_stalls": f["markers_lost_in_stalls"],
         "markers_late_after_stalls": f["markers_late_after_stalls"],
         **_joins_row(f.get("over_joins"))}
        for path, figures in out.items() for name, f in figures["listeners"].items()]
    result = {
        "command": f"python -m tests.bench.latency  ({seconds:g} s per path; "
                   f"{', '.join(rejoining) or 'no listener'} joined "
                   f"{rejoins if isinstance(rejoins, int) else per_path} more times, "
                   f"{rejoin_seconds:g} s each)",
        "what": "marker onset entering (ffmpeg's real-time reader / the broadcaster page's "
                "microphone stream) to the same onset at the listener page's speakers "
                "(Web Audio on the <audio> element, hls.js through townsquare edge)",
        "targets": {"p50_s": TARGET_P50, "p99_s": TARGET_P99},
        "listeners": {
            "listen-page": "the edge's listener page /listen/ROOM (hls.js in low-latency "
                           "mode, best AAC rendition fixed, the page playing up to 1.25x while "
                           "behind hls.js's target latency, restart after 6 s without progress)",
            "hlsjs-defaults": "new Hls() with every default (lowLatencyMode on), the room's "
                              "master playlist, hls.js's own rendition choice",
        },
        "hlsjs": (Path(__file__).parents[2] / "edge" / "static" / "hls.js.VERSION"
                  ).read_text().split(" from", 1)[0],
        "markers": {"every_s": 1.0, "burst_s": markers.BURST, "cycle": markers.CYCLE,
                    "frequencies_hz": [markers.frequency(0), markers.frequency(-1)]},
        "summary": summary,
        "paths": out,
    }
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
