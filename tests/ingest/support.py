"""What the ingest tests share: a running `townsquare ingest`, publishers, and ears.

The ears are plain HTTP and PyAV: read the room's live playlist from the origin, fetch the
init segment and the newest whole segments, decode them, and look at the spectrum.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

from ingest.jitter import MAX_STEER
from ingest.metrics import IngestMetrics
from ingest.rooms import Room, RoomPolicy, Rooms
from ingest.rtmp.server import RtmpServer
from ingest.stream_keys import hash_key
from tests.fuzz import seeds
from tests.ingest.twins import RecordingPackager
from tests.support.procs import Service, free_port, running

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
RATE = 48_000


@dataclass
class Ingest:
    service: Service
    control: str
    origin: str
    rtmp_port: int
    token: str
    data: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.control, timeout=10.0,
                            headers={"Authorization": f"Bearer {self.token}"})

    def create_room(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/rooms", json={"name": name})
            assert r.status_code == 201, r.text
            return dict(r.json())

    def room(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/rooms/{name}")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"


@contextmanager
def ingest_service(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Ingest]:
    control, origin, rtmp = free_port(), free_port(), free_port()
    token = "test-admin-" + secrets.token_hex(12)
    data = tmp / "data"
    args = ["ingest", "--host", "127.0.0.1", "--control-port", str(control),
            "--rtmp-port", str(rtmp), "--origin-port", str(origin), "--data", str(data)]
    with running(args, tmp / "ingest.log", f"http://127.0.0.1:{control}/healthz",
                 env={"TOWNSQUARE_ADMIN_TOKEN": token, **(env or {})}) as svc:
        yield Ingest(svc, f"http://127.0.0.1:{control}", f"http://127.0.0.1:{origin}",
                     rtmp, token, data)


def ffmpeg_publish(url: str, freq: float, seconds: float = 60.0, video: bool = False,
                   log: Path | None = None, sample_rate: int = 44100) -> subprocess.Popen[bytes]:
    """The Debian ffmpeg CLI publishing a sine tone (and test video, like OBS) over RTMP."""
    args = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
            "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={sample_rate}"]
    if video:
        args += ["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
    args += ["-t", str(seconds), "-c:a", "aac", "-b:a", "128k"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "50",
                 "-pix_fmt", "yuv420p"]
    args += ["-f", "flv", url]
    if log is None:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


# --- listening --------------------------------------------------------------------------

@dataclass
class Playlist:
    url: str
    text: str
    segments: list[tuple[int, str]]  # (media sequence number, URI) of whole segments
    parts: int  # parts listed after the last whole segment
    ended: bool

    @property
    def position(self) -> tuple[int, int]:
        """(segments, parts): grows as the live playlist advances."""
        last = self.segments[-1][0] if self.segments else 0
        return last, self.parts


def media_playlist(origin: str, room: str, client: httpx.Client | None = None) -> Playlist:
    c = client or httpx.Client(timeout=10.0)
    master_url = f"{origin}/live/{room}/master.m3u8"
    # A broadcast is announced once every rendition holds two whole segments (~4 s in).
    deadline = time.monotonic() + 15
    while (master := c.get(master_url)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    master.raise_for_status()
    uri = next(line for line in master.text.splitlines() if line and not line.startswith("#")
               and "aac" in line)
    url = str(httpx.URL(master_url).join(uri))
    text = c.get(url).raise_for_status().text
    msn = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))  # type: ignore[union-attr]
    segments, parts = [], 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:"):
            parts += 1
        elif line and not line.startswith("#"):
            segments.append((msn, line))
            msn += 1
            parts = 0
    return Playlist(url, text, segments, parts, "#EXT-X-ENDLIST" in text)


def recent_audio(origin: str, room: str, segments: int = 2) -> np.ndarray:
    """Decode the newest whole segments of the room's AAC rendition: float (2, n) at 48 kHz."""
    with httpx.Client(timeout=10.0) as c:
        pl = media_playlist(origin, room, c)
        assert pl.segments, f"no whole segment yet:\n{pl.text}"
        # The newest segments belong to the newest epoch: its init segment is the last MAP.
        init = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', pl.text)[-1]
        blobs = [c.get(str(httpx.URL(pl.url).join(init))).raise_for_status().content]
        for _, uri in pl.segments[-segments:]:
            blobs.append(c.get(str(httpx.URL(pl.url).join(uri))).raise_for_status().content)
    return decode_mp4(b"".join(blobs))


def decode_mp4(data: bytes) -> np.ndarray:
    out = []
    with av.open(io.BytesIO(data), format="mp4", mode="r") as container:
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=RATE)
        for frame in container.decode(audio=0):
            frame.pts = None
            for f in resampler.resample(frame):
                out.append(f.to_ndarray())
    assert out, "no audio decoded"
    return np.concatenate(out, axis=1)


def rms_dbfs(pcm: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return float(20 * np.log10(max(rms, 1e-9)))


def tone_db(pcm: np.ndarray, freq: float, width: float | None = None) -> float:
    """The spectrum's height at `freq` relative to its strongest peak, in dB (0 = the top).

    A tone someone publishes sits within a few dB of the top; one nobody publishes is
    down at the codec's noise, 60 dB or more below. The band looked in is ±15 Hz, or as wide
    as the speaker's jitter buffer may shift the tone while it steers its level back to its
    target (`ingest.jitter.MAX_STEER`, 2 %: a 3 kHz tone heard at 3 060 Hz for the 10 s after
    a burst from a publisher with video, in a clean run of the suite)."""
    if width is None:
        width = max(15.0, 1.25 * MAX_STEER * freq)
    mono = pcm.mean(axis=0)
    spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    freqs = np.fft.rfftfreq(len(mono), 1 / RATE)
    band = spec[(freqs > freq - width) & (freqs < freq + width)]
    return float(20 * np.log10(band.max() / (spec.max() + 1e-12) + 1e-12))


def wait_for(predicate: Any, timeout: float, interval: float = 0.25, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, AssertionError, StopIteration, av.FFmpegError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what or predicate} not true within {timeout}s (last: {last!r})")


@asynccontextmanager
async def golden_key_server(name: str) -> AsyncIterator[tuple[IngestMetrics, Room, RtmpServer]]:
    """An RTMP server in this process, with room `name` taking the stream key of ffmpeg's
    captured sessions (`tests.fuzz.seeds`); stopped, with its rooms, at the end."""
    metrics = IngestMetrics()
    rooms = Rooms(RecordingPackager(), None, metrics, RoomPolicy())
    room, _ = await rooms.create(name)
    room.key_hash = hash_key(seeds.GOLDEN_KEY)
    server = RtmpServer(rooms, metrics, "127.0.0.1", 0)
    await server.start()
    try:
        yield metrics, room, server
    finally:
        await server.stop()
        await rooms.close()
