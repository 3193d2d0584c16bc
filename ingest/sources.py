"""Program sources for a local broadcast: a generated test signal and anything ffmpeg reads.

A source hands out planar float32 stereo PCM at 48 kHz in blocks; it does no pacing (the
capture loop owns the clock) and returns None once it has nothing more.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from packager.ladder import SAMPLE_RATE


class SourceError(Exception):
    """A capture source that cannot be opened or read."""


class Source(Protocol):
    name: str
    may_block: bool  # reading touches disk or network, so run it off the event loop

    def read(self, n: int) -> np.ndarray | None:
        """Up to `n` samples as a (2, m) float32 array, m ≥ 1; None at the end."""
        ...

    def close(self) -> None: ...


class TestSignal:
    """A speech-like test signal: a voiced tone whose pitch and loudness move like
    syllables, plus a 1 kHz marker beep of 50 ms at the start of every wall-clock second,
    so a listener (or a test) can tell where in time it is. `seconds` bounds its length.

    Live (no `start_time`), it behaves like a microphone: a block is heard the moment it is
    read, so the beep falls on the sample read when the wall clock passes a second, however
    far ahead of real time the reader runs (the capture loop stays a block or two ahead).
    PROGRAM-DATE-TIME is checked against these beeps. With `start_time`, the beeps follow the
    sample count from that time instead (reproducible output)."""

    name = "test signal"
    may_block = False

    def __init__(self, seconds: float | None = None, frequency: float = 220.0,
                 start_time: float | None = None):
        self.total = None if seconds is None else int(seconds * SAMPLE_RATE)
        self.frequency = frequency
        self.pos = 0
        self.phase = 0.0
        self.live = start_time is None
        self.t0 = time.time() if start_time is None else start_time

    def read(self, n: int) -> np.ndarray | None:
        if self.total is not None:
            n = min(n, self.total - self.pos)
            if n <= 0:
                return None
        idx = np.arange(self.pos, self.pos + n, dtype=np.float64)
        t = idx / SAMPLE_RATE
        # Pitch glides ±15 % at 0.7 Hz; loudness rises and falls four times a second.
        f = self.frequency * (1 + 0.15 * np.sin(2 * math.pi * 0.7 * t))
        phase = self.phase + 2 * math.pi * np.cumsum(f) / SAMPLE_RATE
        self.phase = float(phase[-1] % (2 * math.pi))
        voice = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
        envelope = 0.25 + 0.2 * np.sin(2 * math.pi * 4 * t) ** 2
        signal = 0.35 * voice * envelope
        if self.live:
            wall = time.time() + (idx - self.pos) / SAMPLE_RATE
        else:
            wall = self.t0 + t
        beep = (wall % 1.0) < 0.05
        signal = np.where(beep, 0.5 * np.sin(2 * math.pi * 1000 * t), signal)
        self.pos += n
        block = signal.astype(np.float32)
        return np.vstack([block, block])

    def close(self) -> None:
        pass


class MediaSource:
    """Any file or URL that FFmpeg (through PyAV) can open, decoded and resampled to
    48 kHz stereo. Reading is as fast as decoding; the capture loop paces it."""

    def __init__(self, url: str, options: dict[str, str] | None = None,
                 format: str | None = None, timeout: float = 10.0,
                 describe_failure: Callable[[Exception], str] | None = None):
        import av

        self.name = url
        self.may_block = True
        try:
            self._container = av.open(url, format=format, options=options or {}, timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as exc:
            why = describe_failure(exc) if describe_failure else f"cannot open {url}: {exc}"
            raise SourceError(why) from exc
        if not self._container.streams.audio:
            self._container.close()
            raise SourceError(f"{url} has no audio stream")
        self._stream = self._container.streams.audio[0]
        self._frames = self._container.decode(self._stream)
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._done = False

    def _pull(self) -> bool:
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            frames = self._resampler.resample(None)
            self._done = True
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.name}: decoding failed: {exc}") from exc
        else:
            frame.pts = None
            frames = self._resampler.resample(frame)
        for f in frames:
            arr = f.to_ndarray().astype(np.float32, copy=False)
            self._buffer.append(arr)
            self._buffered += arr.shape[1]
        return not self._done

    def read(self, n: int) -> np.ndarray | None:
        while self._buffered < n and not self._done:
            self._pull()
        if self._buffered == 0:
            return None
        data = np.concatenate(self._buffer, axis=1) if len(self._buffer) > 1 else self._buffer[0]
        out, rest = data[:, :n], data[:, n:]
        self._buffer = [rest] if rest.shape[1] else []
        self._buffered = rest.shape[1]
        return out

    def close(self) -> None:
        self._container.close()


def open_source(spec: str, seconds: float | None = None) -> Source:
    """`tone` (the test signal) or a file path / URL."""
    if spec in ("tone", "test", "demo"):
        return TestSignal(seconds)
    return MediaSource(spec)


class MicrophoneSource(MediaSource):
    """The host's microphone through ALSA (PulseAudio and PipeWire answer as ALSA `default`).

    The device comes from `TOWNSQUARE_MIC_DEVICE` (e.g. `hw:1,0`, `plughw:CARD=USB`) and
    defaults to `default`. PyAV's wheels bundle their own alsa-lib, which looks for its
    configuration under the path it was built in; pointing `ALSA_CONFIG_PATH` at the
    system's file (when the user has not) is what makes device names resolve at all.
    """

    def __init__(self, device: str | None = None):
        device = device or os.environ.get("TOWNSQUARE_MIC_DEVICE") or "default"
        if "ALSA_CONFIG_PATH" not in os.environ and os.path.exists(_SYSTEM_ALSA_CONF):
            os.environ["ALSA_CONFIG_PATH"] = _SYSTEM_ALSA_CONF
        super().__init__(device, {"sample_rate": str(SAMPLE_RATE)}, format="alsa", timeout=5.0,
                         describe_failure=lambda exc: _no_microphone(device, exc))
        self.name = f"microphone {device}"


_SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


def _no_microphone(device: str, exc: Exception) -> str:
    why = f"cannot open the microphone (ALSA device {device!r}): {exc}"
    if not os.path.exists("/dev/snd") and not os.environ.get("PULSE_SERVER"):
        why += ". This machine has no sound devices (/dev/snd is missing)"
    elif not os.path.exists(_SYSTEM_ALSA_CONF) and "ALSA_CONFIG_PATH" not in os.environ:
        why += f". No ALSA configuration at {_SYSTEM_ALSA_CONF} (apt-get install libasound2)"
    return why + ("; pick another device with TOWNSQUARE_MIC_DEVICE (see `arecord -L`), "
                  "or broadcast a file or URL with --source PATH|URL, or a test tone with "
                  "--source tone")


def open_microphone(device: str | None = None) -> Source:
    """The host microphone as a Source; SourceError with the way out when there is none."""
    return MicrophoneSource(device)
