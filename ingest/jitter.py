"""A speaker's jitter buffer: absorbs arrival jitter and the publisher's clock drift.

Audio arrives in bursts (an AAC frame every 21 ms over TCP, behind video keyframes; Opus
every 20 ms over UDP) on the publisher's clock; the program takes fixed blocks on ours.
The buffer first fills to `target`, then plays. Its level is steered back to the target by
consuming slightly more or fewer input samples per output block (linear interpolation,
in proportion to how far off it is, at most 2 %): a publisher whose clock runs fast no longer grows the
latency, one that runs slow no longer runs dry every few minutes. Beyond `max_level` the
oldest audio is dropped outright (a burst after a stall). An empty buffer goes back to
filling, and the program hears silence meanwhile; that silence is owed: audio arriving
late after it (the event loop or the network stalled, then everything comes at once) is
skipped by the same amount above the target, so a stall costs a gap, never lasting latency.

Audio can also `arrive` stamped with the moment it came in, compressed if need be (a
callable that decodes it), and wait there until the program clock `admit`s everything
that came in up to the time of the block it renders. The clock renders the blocks of a
part together when the encoder needs them, not one by one as each falls due, and a block
rendered late this way hears exactly what it would have heard on time: the audio that had
arrived by then, in the same order with the same pulls between. Decoding then happens in
the same wake-up as rendering, ten frames at a time, which costs a fraction of a frame
decoded by itself in a wake-up of its own (measured in `docs/performance.md`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from packager.ladder import SAMPLE_RATE

# Audio as it came in: samples, or a call that decodes them (None when they do not decode).
Arrival = np.ndarray | Callable[[], np.ndarray | None]
# Arrivals waiting for the clock: it admits them at least every half second, so this bound
# (about 1.3 s of AAC frames) is reached only when it stops; the oldest are then admitted
# at once, and the buffer's own `max_level` bounds what they become.
MAX_ARRIVALS = 64
# The most the level's steering speeds up or slows down a speaker (a fraction of real time).
MAX_STEER = 0.02


def realise(audio: Arrival) -> np.ndarray | None:
    """The samples of an arrival, decoding it if need be (None: it did not decode)."""
    return audio() if callable(audio) else audio


@dataclass(slots=True)
class JitterStats:
    underruns: int = 0
    dropped_samples: int = 0
    corrected_blocks: int = 0
    admitted_early: int = 0  # arrivals pushed before their time: too many were waiting


class JitterBuffer:
    def __init__(self, target_ms: float = 120.0, max_ms: float = 1000.0) -> None:
        self.target = int(SAMPLE_RATE * target_ms / 1000)
        self.max_level = max(self.target * 2, int(SAMPLE_RATE * max_ms / 1000))
        # Inside ±band the level is left alone: bursts of one frame are not drift.
        self.band = max(self.target // 2, 960)
        self.stats = JitterStats()
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples already taken from _chunks[0]
        self._level = 0
        self._smoothed = 0.0
        self._debt = 0  # silence played in place of audio that may still arrive
        self._played = False  # has ever played: before that, silence is not a debt
        self._arrivals: deque[tuple[float, Arrival]] = deque()
        self.playing = False

    @property
    def level(self) -> int:
        return self._level

    @property
    def waiting(self) -> int:
        """Arrivals not admitted yet."""
        return len(self._arrivals)

    def arrive(self, audio: Arrival, at: float) -> None:
        """Audio that came in at `at` (the program clock's time), pushed when the clock
        admits it. Arrivals must come in time order."""
        self._arrivals.append((at, audio))
        if len(self._arrivals) > MAX_ARRIVALS:
            self._admit_one()
            self.stats.admitted_early += 1

    def admit(self, until: float) -> None:
        """Push every arrival that came in by `until`, decoding it if need be."""
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= until:
            self._admit_one()

    def _admit_one(self) -> None:
        _, audio = self._arrivals.popleft()
        pcm = realise(audio)
        if pcm is not None:
            self.push(pcm)

    def push(self, pcm: np.ndarray) -> None:
        if pcm.ndim != 2 or pcm.shape[0] != 2 or pcm.shape[1] == 0:
            return
        self._chunks.append(pcm.astype(np.float32, copy=False))
        self._level += pcm.shape[1]
        if self._debt and self._level > self.target:
            late = min(self._debt, self._level - self.target)
            self._skip(late)
            self._debt -= late
            self.stats.dropped_samples += late
        if self._level > self.max_level:
            excess = self._level - self.target
            self._skip(excess)
            self.stats.dropped_samples += excess

    def pull(self, n: int) -> np.ndarray | None:
        """n samples of this speaker, or None while filling (the mixer adds nothing)."""
        if not self.playing:
            if self._level < self.target:
                if self._played:
                    self._debt = min(self._debt + n, self.max_level)
                return None
            self.playing = self._played = True
            self._smoothed = float(self._level)
        self._smoothed += 0.05 * (self._level - self._smoothed)
        excess = self._smoothed - self.target
        take = n
        if abs(excess) > self.band:
            # Proportional: remove the excess over ~5 s, at most 2 % faster or slower.
            step = min(max(1, int(abs(excess) * n / (5 * SAMPLE_RATE))), int(n * MAX_STEER))
            take = n + step if excess > 0 else n - step
            self.stats.corrected_blocks += 1
        if self._level < take:
            # Ran dry: play what is left, pad with silence, fill up again.
            got = self._take(self._level)
            self.playing = False
            self.stats.underruns += 1
            self._debt = min(self._debt + n - got.shape[1], self.max_level)
            out = np.zeros((2, n), np.float32)
            out[:, : got.shape[1]] = got[:, :n]
            return out
        block = self._take(take)
        if take != n:
            block = _stretch(block, n)
        return block

    def _take(self, n: int) -> np.ndarray:
        parts = []
        need = n
        while need > 0 and self._chunks:
            head = self._chunks[0]
            avail = head.shape[1] - self._offset
            k = min(avail, need)
            parts.append(head[:, self._offset : self._offset + k])
            need -= k
            self._offset += k
            if self._offset >= head.shape[1]:
                self._chunks.popleft()
                self._offset = 0
        self._level -= n - need
        if not parts:
            return np.zeros((2, 0), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _skip(self, n: int) -> None:
        self._take(n)


def _stretch(block: np.ndarray, n: int) -> np.ndarray:
    """Resample a block to n samples by linear interpolation (a fraction of a percent)."""
    m = block.shape[1]
    x = np.linspace(0.0, m - 1, n)
    xp = np.arange(m)
    return np.stack([np.interp(x, xp, block[0]), np.interp(x, xp, block[1])]).astype(np.float32)
