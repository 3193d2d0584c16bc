"""Ingest cost, on demand: `python -m tests.bench.encoder` (results in results/encoder.json).

What one room costs the machine that ingests it, against the Debian ffmpeg CLI doing the same
job on the same input, in the same run. Three measurements:

1. **Live ingest**, the figure the ≤ 1.0× target is for. An RTMP publisher (the ffmpeg CLI,
   `-re`, copying the AAC stream, so it costs next to nothing) sends the same 48 kHz stereo
   AAC file, looped, to one of
   - `townsquare ingest`, the whole process: RTMP, AAC decode, jitter buffer, mix and
     limiter, the default ladder's three renditions encoded and cut into CMAF parts
     (213/200 ms) and 1.92 s segments, LL-HLS playlists, the recording index, every object
     written to the local store, with the control API and the origin idle beside it (and,
     as in every layout where the origin shares the packager's process, no `state.json`);
   - `ffmpeg -listen 1`: RTMP, AAC decode, the same three encoders, fMP4 HLS of 1.92 s
     segments written to files. It cuts no parts, so it packages less than townsquare.
   Only the server's CPU is counted (/proc/PID/stat, every thread), over a window that opens
   once it is on air. Rounds alternate between the two; the figure is CPU seconds per
   broadcast-minute, and the ratio is of the medians. townsquare's figure is also split by
   kind of thread (event loop, encoders, store), from its `townsquare_thread_cpu_seconds`.
2. **Rooms per core**: a core's 60 CPU seconds a minute over the one-room figure above, then
   checked: that many rooms at once in one `townsquare ingest` on one CPU, each keeping real
   time (program audio fed at the wall clock's pace, parts cut as due, under a second of
   audio waiting for the encoder). Rooms in one process share its wake-ups, so a room costs
   less among others; as many rooms as that check's per-room figure fits in 90 % of the core
   are checked next. The reference at that scale: as many `ffmpeg -listen` processes, one a
   room, on the same CPU, in rounds interleaved with that many rooms in one `townsquare
   ingest` (the largest check passed is the first of them); the ratio is of the medians.
3. **Encode and cut only** (a diagnostic, no I/O): the three `RenditionEncoder`s fed 20 ms
   blocks in-process against the ffmpeg CLI encoding the same ladder from a WAV file, both
   as fast as they go. Beside (1) it tells codec work from the rest.

The servers run on CPU 1 and the publishers on CPU 0 when there are two CPUs.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ingest.sources import TestSignal
from packager.cmaf import RenditionEncoder
from packager.ladder import DEFAULT_LADDER, GRID_SAMPLES, parse_ladder
from serving.threads import KINDS, OTHER, stat_cpu_seconds
from tests.support.procs import free_port, running

RESULTS = Path(__file__).parent / "results" / "encoder.json"
ROUNDS = int(os.environ.get("BENCH_ENCODER_ROUNDS", "3"))
WINDOW = float(os.environ.get("BENCH_ENCODER_WINDOW", "20"))  # seconds measured per round
SECONDS = int(os.environ.get("BENCH_ENCODER_SECONDS", "60"))  # audio of the in-process runs
MAX_ROOMS = int(os.environ.get("BENCH_ENCODER_MAX_ROOMS", "30"))  # the check's ceiling
SETTLE = 2.0  # seconds on air before a window opens
THREAD_CPU = "townsquare_thread_cpu_seconds_total"
THREAD_KINDS = (*dict.fromkeys(kind for _, kind in KINDS), OTHER)  # loop, encode, store, …
FFMPEG = "ffmpeg"
LADDER = (("aac", "96k"), ("aac", "48k"), ("libopus", "64k"))  # DEFAULT_LADDER, as CLI flags
SEGMENT_UNITS = 6  # the packager's default: 1.92 s segments
# Parts a room cuts per second, from the ladder: each segment's whole parts and its short
# last one, if any (an Opus segment is 96 frames: 9 parts of 10 and one of 6).
PARTS_PER_SECOND = sum(
    math.ceil(r.segment_frames(SEGMENT_UNITS) / r.part_frames)
    for r in parse_ladder(DEFAULT_LADDER)) / (SEGMENT_UNITS * GRID_SAMPLES / 48_000)

PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPU, LOAD_CPU = "1", "0"
CPUS = (f"servers (townsquare ingest, ffmpeg -listen, the in-process encoders) on CPU "
        f"{SERVER_CPU}, RTMP publishers on CPU {LOAD_CPU}" if PINNED else "unpinned")


def _on(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if PINNED else []


def _pin(pid: int, cpu: str) -> None:
    if PINNED:
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True,
                       capture_output=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid` so far."""
    return stat_cpu_seconds(f"/proc/{pid}/stat")


def _samples(url: str) -> dict[str, float]:
    """Every sample of a Prometheus page, summed over labels, by sample name; the CPU by
    kind of thread also as `NAME:KIND`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            if s.name == THREAD_CPU:
                out[f"{THREAD_CPU}:{s.labels['thread']}"] = s.value
    return out


# --- input and publishers ---------------------------------------------------------------

def write_inputs(work: Path, seconds: int) -> tuple[np.ndarray, Path, Path]:
    """The test signal as PCM, as a WAV file and as the AAC file the publishers send."""
    block = TestSignal(seconds=seconds, start_time=0.0).read(seconds * 48_000)
    assert block is not None
    wav, m4a = work / "signal.wav", work / "signal.m4a"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=48_000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
        frame.sample_rate = 48_000
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav),
                    "-c:a", "aac", "-b:a", "128k", str(m4a)], check=True)
    return block, wav, m4a


@contextmanager
def publishers(m4a: Path, urls: list[str], log: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One `ffmpeg -re` per URL, the file looped and its AAC copied, on the load CPU."""
    procs: list[subprocess.Popen[bytes]] = []
    with open(log, "ab") as out:
        try:
            for url in urls:
                procs.append(subprocess.Popen(
                    [*_on(LOAD_CPU), FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error",
                     "-re", "-stream_loop", "-1", "-i", str(m4a), "-c:a", "copy", "-f", "flv",
                     url], stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            yield procs
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _wait(ready: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]],
          timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(0.2)


# --- 1 and 2: live ingest -----------------------------------------------------------------

def townsquare_live(m4a: Path, rooms: int, window: float, work: Path,
                    settle: float = SETTLE) -> dict[str, Any]:
    """`rooms` rooms on air in one `townsquare ingest`, one publisher each: CPU over `window`
    and whether every room kept real time."""
    work.mkdir(parents=True)
    control_port, rtmp_port, origin_port = free_port(), free_port(), free_port()
    control, origin = f"http://127.0.0.1:{control_port}", f"http://127.0.0.1:{origin_port}"
    token = "bench-" + secrets.token_hex(12)
    args = ["ingest", "--host", "127.0.0.1", "--control-port", str(control_port),
            "--rtmp-port", str(rtmp_port), "--origin-port", str(origin_port),
            "--data", str(work / "data")]
    env = {"TOWNSQUARE_ADMIN_TOKEN": token, "TOWNSQUARE_LOG_LEVEL": "WARNING",
           # One address publishes every room here; rooms are created in a burst.
           "TOWNSQUARE_RTMP_MAX_CONNECTIONS_PER_ADDRESS": str(max(32, rooms)),
           "TOWNSQUARE_API_BURST": str(max(40, 2 * rooms))}
    with ExitStack() as stack:
        svc = stack.enter_context(running(args, work / "ingest.log", control + "/healthz", env))
        pid = svc.proc.pid
        _pin(pid, SERVER_CPU)
        names = [f"bench{i}" for i in range(rooms)]
        keys = []
        with httpx.Client(base_url=control, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            for name in names:
                r = api.post("/rooms", json={"name": name})
                r.raise_for_status()
                keys.append(r.json()["stream_key"])
        pubs = stack.enter_context(publishers(
            m4a, [f"rtmp://127.0.0.1:{rtmp_port}/live/{k}" for k in keys], work / "pub.log"))

        def on_air() -> bool:
            return all(httpx.get(f"{origin}/live/{n}/master.m3u8", timeout=5).status_code == 200
                       for n in names)

        _wait(on_air, f"{rooms} rooms on air", [svc.proc, *pubs])
        time.sleep(settle)

        def probe() -> tuple[dict[str, float], float]:
            """Both servers' metrics, and when they were read (the middle of the reading: on
            a busy machine a scrape can take a good part of a short window)."""
            start = time.monotonic()
            got = {**_samples(control + "/metrics"), **_samples(origin + "/metrics")}
            return got, (start + time.monotonic()) / 2

        (before, read0), cpu0, t0 = probe(), cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        (after, read1), cpu1, t1 = probe(), cpu_seconds(pid), time.monotonic()
        if any(p.poll() is not None for p in [svc.proc, *pubs]):
            raise RuntimeError("a publisher or the ingest exited during the window")

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    # The process's CPU is read right after each scrape; what its metrics count, between the
    # two scrapes.
    wall, cpu, scraped = t1 - t0, cpu1 - cpu0, read1 - read0
    fed = delta("townsquare_ingest_program_seconds_total") / rooms
    parts = delta("townsquare_packager_parts_total") / rooms
    queued = after.get("townsquare_packager_pcm_queued_seconds", 0.0)
    return {
        "rooms": rooms, "window_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / wall, 3),
        "cpu_s_per_broadcast_minute": round(cpu / wall * 60 / rooms, 3),
        # Where it went: the event loop (RTMP, decode, mix, playlists, the store's calls),
        # the encoders' thread, the store's writers.
        "by_thread_s_per_broadcast_minute": {
            kind: round(delta(f"{THREAD_CPU}:{kind}") / scraped * 60 / rooms, 3)
            for kind in THREAD_KINDS},
        # Real time: each room's program clock fed its broadcast at the wall clock's pace,
        # its parts were cut as due, and nothing waits for the encoder.
        "program_fed_over_wall": round(fed / scraped, 3),
        "parts_cut_over_due": round(parts / (scraped * PARTS_PER_SECOND), 3),
        "encoder_queue_s": round(max(queued, 0.0), 3),
        "late_blocks": delta("townsquare_ingest_program_late_blocks_total"),
        "jitter_underruns": delta("townsquare_ingest_jitter_underruns_total"),
    }


def ffmpeg_live(m4a: Path, window: float, work: Path, settle: float = SETTLE,
                rooms: int = 1) -> dict[str, Any]:
    """The ffmpeg CLI as the RTMP server of `rooms` rooms, one process each (as the CLI
    runs them), all on the server CPU: decode, the ladder, fMP4 HLS. CPU per room."""
    work.mkdir(parents=True)
    with ExitStack() as stack:
        log = stack.enter_context(open(work / "ffmpeg.log", "ab"))
        servers, urls = [], []
        for room in range(rooms):
            port = free_port()
            url = f"rtmp://127.0.0.1:{port}/live/bench"
            out = work / f"room{room}"
            out.mkdir()
            cmd = [*_on(SERVER_CPU), FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error",
                   "-listen", "1", "-i", url]
            for i, (codec, rate) in enumerate(LADDER):
                cmd += ["-map", "0:a", f"-c:a:{i}", codec, f"-b:a:{i}", rate]
            cmd += ["-ar", "48000", "-ac", "2", "-f", "hls", "-hls_segment_type", "fmp4",
                    "-hls_time", "1.92", "-hls_list_size", "6", "-hls_flags", "delete_segments",
                    "-var_stream_map", "a:0 a:1 a:2", str(out / "v%v.m3u8")]
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            stack.callback(_stop, server)
            servers.append(server)
            urls.append(url)
        time.sleep(0.5)  # listening; a probe connection would take its one accept
        pubs = stack.enter_context(publishers(m4a, urls, work / "pub.log"))
        _wait(lambda: all((work / f"room{r}" / f"v{i}.m3u8").exists()
                          for r in range(rooms) for i in range(3)),
              "ffmpeg's playlists", [*servers, *pubs])
        time.sleep(settle)
        cpu0, t0 = sum(cpu_seconds(s.pid) for s in servers), time.monotonic()
        time.sleep(window)
        cpu1, t1 = sum(cpu_seconds(s.pid) for s in servers), time.monotonic()
        if any(p.poll() is not None for p in [*servers, *pubs]):
            raise RuntimeError("a publisher or ffmpeg exited during the window")
    wall, cpu = t1 - t0, cpu1 - cpu0
    return {"rooms": rooms, "window_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_share": round(cpu / wall, 3),
            "cpu_s_per_broadcast_minute": round(cpu / wall * 60 / rooms, 3)}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- 3: encode and cut only ---------------------------------------------------------------

def townsquare_encode(pcm: np.ndarray) -> dict[str, float]:
    encoders = [RenditionEncoder(r, SEGMENT_UNITS) for r in parse_ladder(DEFAULT_LADDER)]
    cpu0 = time.process_time()
    parts = 0
    for i in range(0, pcm.shape[1], 960):
        block = pcm[:, i:i + 960]
        for enc in encoders:
            parts += len(enc.push(block))
    for enc in encoders:
        parts += len(enc.finish())
    cpu = time.process_time() - cpu0
    return {"cpu_s": round(cpu, 3), "events": parts,
            "cpu_s_per_broadcast_minute": round(cpu / pcm.shape[1] * 48_000 * 60, 3)}


def ffmpeg_encode(wav: Path, seconds: float, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*_on(SERVER_CPU), FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
           "-i", str(wav)]
    for i, (codec, rate) in enumerate(LADDER):
        cmd += ["-map", "0:a", f"-c:a:{i}", codec, f"-b:a:{i}", rate]
    cmd += ["-ar", "48000", "-ac", "2", "-f", "hls", "-hls_segment_type", "fmp4",
            "-hls_time", "1.92", "-hls_playlist_type", "vod",
            "-var_stream_map", "a:0 a:1 a:2", str(out / "v%v.m3u8")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": round(cpu, 3), "cpu_s_per_broadcast_minute": round(cpu / seconds * 60, 3)}


# --- the run ------------------------------------------------------------------------------

def _kept(check: dict[str, Any]) -> bool:
    """Every room kept real time (see `rooms_per_core.how` in the results)."""
    return bool(check["program_fed_over_wall"] >= 0.99 and check["parts_cut_over_due"] >= 0.97
                and check["encoder_queue_s"] < 1.0)


def _median(rows: list[dict[str, Any]]) -> float:
    return float(statistics.median(r["cpu_s_per_broadcast_minute"] for r in rows))


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Each side's median CPU seconds per broadcast-minute."""
    return {k: round(_median(v), 3) for k, v in runs.items()}


def _median_by_thread(rows: list[dict[str, Any]]) -> dict[str, float]:
    """townsquare's CPU per broadcast-minute by kind of thread, the median of each kind."""
    return {kind: round(statistics.median(r["by_thread_s_per_broadcast_minute"][kind]
                                          for r in rows), 3) for kind in THREAD_KINDS}


def run(rounds: int = ROUNDS, window: float = WINDOW, seconds: int = SECONDS,
        max_rooms: int = MAX_ROOMS, results: Path | None = RESULTS,
        settle: float = SETTLE) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        pcm, wav, m4a = write_inputs(work, seconds)
        live: dict[str, list[dict[str, Any]]] = {"townsquare": [], "ffmpeg_cli": []}
        encode: dict[str, list[dict[str, Any]]] = {"townsquare": [], "ffmpeg_cli": []}
        for i in range(rounds):  # interleaved, so drift in the machine's load hits both
            live["ffmpeg_cli"].append(ffmpeg_live(m4a, window, work / f"ffmpeg-{i}", settle))
            live["townsquare"].append(townsquare_live(m4a, 1, window, work / f"ts-{i}", settle))
            encode["ffmpeg_cli"].append(ffmpeg_encode(wav, seconds, work / f"ffmpeg-enc-{i}"))
            if PINNED:
                os.sched_setaffinity(0, {int(SERVER_CPU)})
            try:
                encode["townsquare"].append(townsquare_encode(pcm))
            finally:
                if PINNED:
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        per_room = _median(live["townsquare"])
        derived = math.floor(60 / per_room)
        checks = [townsquare_live(m4a, max(1, min(derived, max_rooms)), window,
                                  work / "rooms-per-core-1", settle)]
        # Rooms in one process share its wake-ups, so a room costs less among others: the
        # first check's own figure says how many fit in 90 % of the core; that many are
        # checked in turn.
        more = min(max_rooms, math.floor(0.9 * 60 / checks[0]["cpu_s_per_broadcast_minute"]))
        if _kept(checks[0]) and more > checks[0]["rooms"]:
            checks.append(townsquare_live(m4a, more, window, work / "rooms-per-core-2",
                                          settle))
        # The reference at the same scale: as many CLI processes, one a room, on that CPU,
        # in rounds interleaved with that many rooms in one `townsquare ingest` (the check
        # is the first), since one window of either moves by 10-20 % on a shared machine.
        largest = max((c for c in checks if _kept(c)), key=lambda c: c["rooms"],
                      default=checks[-1])
        n = largest["rooms"]
        at_scale: dict[str, list[dict[str, Any]]] = {"townsquare": [largest], "ffmpeg_cli": []}
        for i in range(rounds):
            at_scale["ffmpeg_cli"].append(ffmpeg_live(m4a, window, work / f"ffmpeg-rooms-{i}",
                                                      settle, rooms=n))
            if i + 1 < rounds:
                at_scale["townsquare"].append(townsquare_live(m4a, n, window,
                                                              work / f"ts-rooms-{i}", settle))
    kept = [c["rooms"] for c in checks if _kept(c)]
    ratio = per_room / _median(live["ffmpeg_cli"])
    result = {
        "command": f"python -m tests.bench.encoder  ({rounds} rounds of {window:g} s, "
                   f"{seconds} s of audio in-process)",
        "cpus": CPUS,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "pyav": av.__version__,
                    "pyav_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
                    "ffmpeg_cli": _ffmpeg_version()},
        "ladder": DEFAULT_LADDER,
        "live_ingest": {
            "covers": {
                "townsquare": "the whole `townsquare ingest` process with one room on air: "
                              "RTMP, AAC decode, jitter buffer, mix and limiter, three "
                              "renditions encoded, CMAF parts and segments, LL-HLS playlists, "
                              "recording index, objects written to the local store, control "
                              "API and origin idle",
                "ffmpeg_cli": "`ffmpeg -listen 1` with one publisher: RTMP, AAC decode, the "
                              "same three encoders, fMP4 HLS segments (no parts) to files",
            },
            "runs": live,
            "median_cpu_s_per_broadcast_minute": _medians(live),
            "townsquare_median_by_thread_s_per_broadcast_minute": _median_by_thread(
                live["townsquare"]),
            "ratio_townsquare_over_ffmpeg": round(ratio, 3),
            "target_ratio": 1.0,
        },
        "rooms_per_core": {
            "from_one_room": derived,
            "how": "60 CPU seconds a minute over the one-room live figure, checked; then as "
                   "many as that check's own per-room figure fits in 90 % of the core, "
                   "checked. A check passes when every room fed its program at the wall "
                   "clock's pace (>= 0.99), cut >= 97 % of the parts due and left under 1 s "
                   "of audio waiting for the encoder. The reference: as many ffmpeg CLI "
                   "servers as the largest check passed, one process a room (as the CLI "
                   "runs them), on the same CPU, with a publisher each, in rounds "
                   "interleaved with as many rooms in one townsquare ingest (the check is "
                   "the first); the ratio is of the medians.",
            "checks": checks,
            "verified": max(kept, default=0),
            "at_scale": {
                "rooms": n,
                "runs": at_scale,
                "median_cpu_s_per_broadcast_minute": _medians(at_scale),
                "townsquare_median_by_thread_s_per_broadcast_minute": _median_by_thread(
                    at_scale["townsquare"]),
            },
            "ratio_per_room_at_that_scale": round(
                _median(at_scale["townsquare"]) / _median(at_scale["ffmpeg_cli"]), 3),
        },
        "encode_only": {
            "covers": "three RenditionEncoders fed 20 ms blocks in-process (encode and cut, "
                      "no I/O) against the ffmpeg CLI encoding the ladder from a WAV file to "
                      "fMP4 HLS, both as fast as they go",
            "runs": encode,
            "median_cpu_s_per_broadcast_minute": _medians(encode),
            "ratio_townsquare_over_ffmpeg": round(
                _median(encode["townsquare"]) / _median(encode["ffmpeg_cli"]), 3),
        },
    }
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _ffmpeg_version() -> str:
    out = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, check=True).stdout
    return out.split("\n", 1)[0].split(" Copyright")[0].removeprefix("ffmpeg version ")


def main() -> None:
    print(json.dumps(run(), indent=2))
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
