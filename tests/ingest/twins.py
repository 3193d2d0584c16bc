"""In-memory twins for ingest tests: a packager that records what it is fed, a WHIP client."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from packager.errors import BroadcastClosed
from packager.pipeline import EpochPlan, ResumePoint
from packager.recording import EpochInfo

PART_SAMPLES = 10 * 1024


@dataclass
class RecordedBroadcast:
    room: str
    broadcast_id: str
    blocks: list[np.ndarray] = field(default_factory=list)
    closed: bool = False
    ended: bool = False
    captured_at: float | None = None  # the timeline's anchor, as the packager would take it
    wanted_changed: Callable[[], None] | None = None
    # Set by `fail`: what the packager's broadcast does once its encoder or publishing failed.
    failure: str | None = None

    def fail(self, why: str) -> None:
        """From now on refuse audio, as an epoch whose encoder or publishing failed does."""
        self.failure = why

    def feed(self, pcm: np.ndarray) -> None:
        if self.failure is not None:
            raise BroadcastClosed(f"broadcast {self.broadcast_id} failed: {self.failure}")
        assert not self.closed, "fed after close"
        assert pcm.dtype == np.float32 and pcm.ndim == 2 and pcm.shape[0] == 2
        assert np.abs(pcm).max(initial=0) <= 1.0
        self.blocks.append(pcm)

    def samples_wanted(self) -> int:
        """Like the packager's encoder, which wants a part of ten AAC frames at a time: so
        the program clock renders in batches here too."""
        return -self.samples % PART_SAMPLES

    def anchor(self, captured_at: float) -> bool:
        if self.blocks:
            return False  # like the packager: never once audio is out
        self.captured_at = captured_at
        return True

    async def close(self) -> None:
        self.closed = True
        self.ended = True

    async def suspend(self) -> None:
        self.closed = True

    @property
    def samples(self) -> int:
        return sum(b.shape[1] for b in self.blocks)

    def audio(self, last_seconds: float | None = None) -> np.ndarray:
        pcm = np.concatenate(self.blocks, axis=1) if self.blocks else np.zeros((2, 0), np.float32)
        if last_seconds is not None:
            pcm = pcm[:, -int(last_seconds * 48_000):]
        return pcm


class RecordingPackager:
    def __init__(self) -> None:
        self.broadcasts: list[RecordedBroadcast] = []

    async def resume_point(self, room: str, wait: float = 0.0) -> ResumePoint:
        return ResumePoint()

    async def repair(self, room: str, broadcast: str, epochs: tuple[EpochInfo, ...]) -> int:
        return 0

    async def flush(self, deadline: float) -> bool:
        return True

    def start_broadcast(self, room: str, plan: EpochPlan | None = None,
                        on_segment: Callable[[int], None] | None = None) -> RecordedBroadcast:
        b = RecordedBroadcast(room, plan.broadcast if plan else f"b{len(self.broadcasts) + 1}")
        self.broadcasts.append(b)
        return b


class ToneTrack(MediaStreamTrack):
    """A microphone that sings one frequency, paced at real time like a real one."""

    kind = "audio"

    def __init__(self, freq: float, amp: float = 0.3) -> None:
        super().__init__()
        self.freq, self.amp = freq, amp
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        n = 960
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / 48_000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(n) + self._pts) / 48_000
        x = (self.amp * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(x, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, 48_000)
        self._pts += n
        return frame


async def whip_offer(track: MediaStreamTrack) -> tuple[RTCPeerConnection, str]:
    """An aiortc publisher's offer, all candidates gathered (WHIP without trickle)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def whip_answer(pc: RTCPeerConnection, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
