"""Live broadcasts: PCM in, CMAF parts and LL-HLS playlists out (interface first; body follows)."""

from __future__ import annotations

import numpy as np


class Broadcast:
    """One live broadcast of one room.

    `feed()` takes program audio: float32 numpy array shaped (2, n), planar stereo at
    48 kHz, values in [-1, 1]. It never blocks on encoding or storage. The caller owns the
    program clock (it paces feeding at real time); the broadcast counts samples.
    `close()` ends the broadcast: ENDLIST on the live playlists and a complete recording.
    """

    room: str
    broadcast_id: str

    def feed(self, pcm: np.ndarray) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
