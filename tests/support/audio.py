"""Program audio for tests that feed a packager directly, and what a player wrote out, read back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np

from packager.pipeline import Broadcast


def program_tone(seconds: float, freq: float = 330.0, amplitude: float = 0.2) -> np.ndarray:
    """A sine (by default at -14 dBFS) as program audio, or as a speaker's audio: planar
    stereo float32 at 48 kHz, (2, n)."""
    t = np.arange(int(48000 * seconds)) / 48000
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.vstack([x, x])


async def feed_as_encoded(broadcast: Broadcast, block: np.ndarray, seconds: float) -> None:
    """Feed `block` again and again until `seconds` of it went in: faster than real time,
    never more than the encoder has taken."""
    fed = 0.0
    while fed < seconds:
        broadcast.feed(block)
        fed += block.shape[1] / 48_000
        while broadcast._queued:
            await asyncio.sleep(0.01)


def first_channel(path: Path) -> tuple[np.ndarray, int]:
    """An audio file's first channel as float samples, and its sample rate."""
    resampler = av.AudioResampler(format="fltp")
    with av.open(str(path), "r") as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        blocks = [out.to_ndarray()[0] for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


# The test signal's beep (`ingest.sources.TestSignal`): 1 kHz, 50 ms at amplitude 0.5, at the
# start of every wall-clock second. Found by its frequency in 5 ms windows (five whole cycles),
# so that a player's gain or the voice's loudness does not matter.
BEEP_HZ = 1000.0
BEEP_WINDOW = 0.005
BEEP_LEVEL = 0.1  # the window's 1 kHz amplitude, half the tone's: the beep gives 0.25


def beep_onsets(pcm: np.ndarray, rate: int) -> list[float]:
    """Seconds into `pcm` at which the test signal's beeps start, to a window (5 ms): the
    first window with the beep's frequency after half a second without."""
    n = int(rate * BEEP_WINDOW)
    windows = pcm[: len(pcm) // n * n].reshape(-1, n)
    probe = np.exp(-2j * np.pi * BEEP_HZ * np.arange(n) / rate)
    loud = np.flatnonzero(np.abs(windows @ probe) / n > BEEP_LEVEL)
    gap = int(0.5 / BEEP_WINDOW)
    starts = [int(i) for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > gap]
    return [i * n / rate for i in starts]
