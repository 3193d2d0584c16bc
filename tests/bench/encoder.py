"""Encoder benchmark, on demand: `python -m tests.bench.encoder` (results in results/encoder.json).

The default ladder (AAC-LC 96 k, AAC-LC 48 k, Opus 64 k, all 48 kHz stereo) encoded and cut
into CMAF parts by townsquare's `RenditionEncoder`, fed in 20 ms blocks as the live mixer
does, against the Debian ffmpeg CLI encoding the same ladder from the same file into
fragmented MP4 HLS. Both on one core's worth of work; figures are CPU seconds per second of
audio and the speed over real time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from ingest.sources import TestSignal
from packager.cmaf import RenditionEncoder
from packager.ladder import DEFAULT_LADDER, parse_ladder

RESULTS = Path(__file__).parent / "results" / "encoder.json"
SECONDS = int(os.environ.get("BENCH_ENCODER_SECONDS", "120"))


def _signal() -> np.ndarray:
    block = TestSignal(seconds=SECONDS, start_time=0.0).read(SECONDS * 48_000)
    assert block is not None
    return block


def townsquare(pcm: np.ndarray) -> dict[str, float]:
    encoders = [RenditionEncoder(r, 6) for r in parse_ladder(DEFAULT_LADDER)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    parts = 0
    for i in range(0, pcm.shape[1], 960):
        block = pcm[:, i:i + 960]
        for enc in encoders:
            parts += len(enc.push(block))
    for enc in encoders:
        parts += len(enc.finish())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "x_realtime_cpu": round(SECONDS / cpu, 1), "events": parts}


def ffmpeg(wav: Path, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-threads", "1", "-i", str(wav)]
    for i, (codec, rate) in enumerate((("aac", "96k"), ("aac", "48k"), ("libopus", "64k"))):
        cmd += ["-map", "0:a", f"-c:a:{i}", codec, f"-b:a:{i}", rate]
    cmd += ["-ar", "48000", "-ac", "2", "-f", "hls", "-hls_segment_type", "fmp4",
            "-hls_time", "1.92", "-hls_playlist_type", "vod",
            "-var_stream_map", "a:0 a:1 a:2", str(out / "v%v.m3u8")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "x_realtime_cpu": round(SECONDS / cpu, 1)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="encoder-bench-"))
    pcm = _signal()
    wav = work / "signal.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=48_000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        frame.sample_rate = 48_000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    runs = {"townsquare": [], "ffmpeg_cli": []}  # type: dict[str, list[dict[str, float]]]
    for _ in range(3):  # interleaved, so load drift hits both
        runs["ffmpeg_cli"].append(ffmpeg(wav, work / "ffmpeg"))
        runs["townsquare"].append(townsquare(pcm))
    best = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "pyav": av.__version__},
        "audio_seconds": SECONDS, "ladder": DEFAULT_LADDER, "runs": runs,
        "best_cpu_seconds": best,
        "ratio_ffmpeg_cpu_over_townsquare_cpu": round(best["ffmpeg_cli"] / best["townsquare"], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
