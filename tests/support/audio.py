"""Program audio for tests that feed a packager directly."""

from __future__ import annotations

import asyncio

import numpy as np

from packager.pipeline import Broadcast


def program_tone(seconds: float, freq: float = 330.0) -> np.ndarray:
    """A sine at -14 dBFS as program audio: planar stereo float32 at 48 kHz, (2, n)."""
    t = np.arange(int(48000 * seconds)) / 48000
    x = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
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
