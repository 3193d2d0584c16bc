"""Ten ffmpeg publishers in one room at once, each its own RTMP connection and tone."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from ingest.jitter import MAX_STEER
from ingest.metrics import IngestMetrics
from ingest.rooms import RoomPolicy, Rooms
from ingest.rtmp.server import RtmpServer
from tests.ingest.twins import RecordingPackager

TONES = [440.0 + 450.0 * i for i in range(10)]  # 440 … 4490 Hz

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")


async def test_ten_rtmp_speakers_are_mixed_under_the_ceiling() -> None:
    packager = RecordingPackager()
    metrics = IngestMetrics()
    rooms = Rooms(packager, None, metrics, RoomPolicy(max_speakers=10))
    room, key = await rooms.create("ten")
    server = RtmpServer(rooms, metrics, "127.0.0.1", 0)
    await server.start()
    procs = [
        await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", f"sine=frequency={f}:sample_rate=48000",
            "-af", "volume=4", "-t", "20", "-c:a", "aac", "-b:a", "96k",
            "-f", "flv", f"rtmp://127.0.0.1:{server.port}/live/{key}")
        for f in TONES
    ]
    try:
        for _ in range(100):
            if len(room.speakers) == 10:
                break
            await asyncio.sleep(0.1)
        assert len(room.speakers) == 10
        # An eleventh is refused with a status, not dropped silently.
        extra = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", "sine", "-t", "3", "-c:a", "aac", "-f", "flv",
            f"rtmp://127.0.0.1:{server.port}/live/{key}", stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(extra.communicate(), 20)
        assert extra.returncode != 0 and b"10 speakers already" in err
        await asyncio.sleep(3.0)
        mix = packager.broadcasts[0].audio(last_seconds=1.0)
        spec = np.abs(np.fft.rfft(mix[0] * np.hanning(mix.shape[1])))
        freqs = np.fft.rfftfreq(mix.shape[1], 1 / 48_000)
        top = spec.max()
        # A speaker's jitter buffer that steers its level back down after the burst (the
        # stall of spawning eleven ffmpegs) plays up to MAX_STEER fast: its tone is heard that
        # much higher (one CI run found 3590 Hz "missing" while its speaker steered).
        levels = {f: spec[np.abs(freqs - f) < 10 + f * MAX_STEER].max() / top for f in TONES}
        if any(level <= 0.3 for level in levels.values()):
            # Everything, untruncated: one CI run lost a tone and pytest cut the evidence.
            pytest.fail("\n".join([
                *(f"{f:.0f} Hz at {20 * np.log10(level):.1f} dB" for f, level in levels.items()),
                f"{len(room.speakers)} speakers in the room",
                *(f"{s.id} {s.remote} {s.input.level_dbfs:.1f} dBFS, {s.input.buffer.level} "
                  f"samples held, playing {s.input.buffer.playing}, {s.input.buffer.stats}"
                  for s in room.speakers.values()),
                "publishers' exit codes: " + str([p.returncode for p in procs])]))
        # Ten tones at −6 dBFS each would sum far past full scale: the limiter holds.
        assert np.abs(mix).max() <= 10 ** (-1 / 20) + 1e-6
        # Spawning eleven ffmpegs stalls this loop; the stall must not leave latency behind.
        assert all(s.input.buffer.level < 24_000 for s in room.speakers.values())
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
            await p.wait()
        await server.stop()
        await rooms.close()
