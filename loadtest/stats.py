"""Counters and latency histograms that worker processes send up and the parent adds up.

Log-spaced buckets (about 4 % wide, 1 ms to 100 s) keep a histogram a fixed small list however
many samples it holds, so one process can record millions of part deliveries and ship them
once a second; percentiles read from the buckets are within a bucket's width.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_LOW, _HIGH, _PER_DECADE = 1e-3, 100.0, 60
BUCKETS = int(math.log10(_HIGH / _LOW) * _PER_DECADE) + 1


def _bucket(seconds: float) -> int:
    if seconds <= _LOW:
        return 0
    return min(BUCKETS - 1, int(math.log10(seconds / _LOW) * _PER_DECADE) + 1)


def _upper(bucket: int) -> float:
    return _LOW * 10 ** (bucket / _PER_DECADE)


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    total: int = 0
    low: float = math.inf  # negative delays are kept here (clock offsets show up)
    high: float = -math.inf

    def add(self, seconds: float) -> None:
        self.counts[_bucket(seconds)] += 1
        self.total += 1
        self.low = min(self.low, seconds)
        self.high = max(self.high, seconds)

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def quantile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return min(_upper(i), self.high)
        return self.high

    def distribution(self) -> list[list[float]]:
        """[upper bound in seconds, count] of every bucket that holds a sample: the whole
        distribution in a few dozen pairs (the first bucket also holds negative values)."""
        return [[round(_upper(i), 5), n] for i, n in enumerate(self.counts) if n]

    def summary(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {"count": self.total, "p50": r(self.quantile(0.5)), "p90": r(self.quantile(0.9)),
                "p99": r(self.quantile(0.99)),
                "max": r(self.high) if self.total else None,
                "min": r(self.low) if self.total else None}


@dataclass(slots=True)
class Tally:
    """What one group of listeners saw since the last report (or in all, once merged)."""

    requests: Counter[str] = field(default_factory=Counter)   # by kind: playlist, blocking, part
    errors: Counter[str] = field(default_factory=Counter)     # by kind: http_503, timeout, ...
    part_delay: Histogram = field(default_factory=Histogram)
    first_part: Histogram = field(default_factory=Histogram)
    parts: int = 0
    bytes: int = 0
    stale_age: int = 0   # answers whose Age exceeded the playlist's part target by far
    playlists_scanned: int = 0   # distinct playlist texts read (`loadtest.playlist.read_shared`)
    listeners: int = 0   # listeners running at the moment of the report
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: Tally) -> None:
        self.requests.update(other.requests)
        self.errors.update(other.errors)
        self.part_delay.merge(other.part_delay)
        self.first_part.merge(other.first_part)
        self.parts += other.parts
        self.bytes += other.bytes
        self.stale_age += other.stale_age
        self.playlists_scanned += other.playlists_scanned
        self.listeners += other.listeners
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
