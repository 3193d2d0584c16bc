"""Program audio for tests that feed a packager directly."""

from __future__ import annotations

import numpy as np


def program_tone(seconds: float, freq: float = 330.0) -> np.ndarray:
    """A sine at -14 dBFS as program audio: planar stereo float32 at 48 kHz, (2, n)."""
    t = np.arange(int(48000 * seconds)) / 48000
    x = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.vstack([x, x])
