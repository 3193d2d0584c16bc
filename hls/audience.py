"""Audience reports: how a room's listeners are counted across a tree of edges.

Each edge counts its own distinct listeners (`edge.listeners`). It tells its upstream how many
listen below it by adding two headers to the playlist requests it already makes:
`Townsquare-Edge: {edge id}` and `Townsquare-Audience: {its own estimate + what its own child
edges reported}`. A shield keeps each child's latest report in a `ReportTable` and adds them up;
the origin of the room's owner keeps the reports of the edges or shields under it the same way
(`packager.audience.AudienceBoard`), and their sum is the room's whole audience.

The rules both ends share live here: the header names, what a well-formed report is, the clamp
on counts and how long a report counts. A report is a latest value, not an increment, so a lost
request costs nothing, and a reporter that stops reporting drops out after `FRESH_SECONDS`.
"""

from __future__ import annotations

import re

EDGE_HEADER = "Townsquare-Edge"
AUDIENCE_HEADER = "Townsquare-Audience"
# A report counts this long after it arrived. Edges report on every upstream playlist request
# (several a second while anyone listens), so this only has to outlast a few missed ones.
FRESH_SECONDS = 15.0
# Counts are clamped to this: no room has more, and a sum of reports stays a small integer.
MAX_COUNT = 10_000_000

_REPORTER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COUNT = re.compile(r"[+-]?[0-9]{1,20}")


def valid_reporter(reporter: str) -> bool:
    """Whether `reporter` may name an edge: 1..64 letters, digits, `.`, `_` or `-`."""
    return _REPORTER.fullmatch(reporter) is not None


def clamp(count: int) -> int:
    return max(0, min(count, MAX_COUNT))


def parse_report(reporter: str | None, count: str | None) -> tuple[str, int] | None:
    """(reporter, clamped count) from the two header values; None when either is missing or
    malformed (a malformed report is ignored, never an error)."""
    if reporter is None or count is None:
        return None
    reporter, count = reporter.strip(), count.strip()
    if not valid_reporter(reporter) or _COUNT.fullmatch(count) is None:
        return None
    return reporter, clamp(int(count))


class ReportTable:
    """Each reporter's latest count per room, counted while fresh.

    Bounded three ways: rooms, reporters per room and entries in all. A report that would pass
    a bound is refused (`report` returns False) rather than evicting a fresh one: the reporters
    already counted keep being counted. Stale entries are swept at most every
    `fresh / 3` seconds, from `report` or `sweep`, so a bound is never held by the dead for long.
    """

    def __init__(self, fresh: float = FRESH_SECONDS, max_rooms: int = 4096,
                 max_reporters: int = 1024, max_entries: int = 65_536) -> None:
        if min(max_rooms, max_reporters, max_entries) < 1 or fresh <= 0:
            raise ValueError("report table bounds and freshness must be positive")
        self.fresh = fresh
        self.max_rooms = max_rooms
        self.max_reporters = max_reporters
        self.max_entries = max_entries
        self.entries = 0
        self._rooms: dict[str, dict[str, tuple[int, float]]] = {}
        self._swept = float("-inf")

    def __len__(self) -> int:
        """Rooms tracked."""
        return len(self._rooms)

    def report(self, room: str, reporter: str, count: int, now: float) -> bool:
        """Record `reporter`'s latest count for `room`; False when a bound refused it."""
        if now - self._swept >= self.fresh / 3:
            self.sweep(now)
        reporters = self._rooms.get(room)
        if reporters is not None and reporter in reporters:
            reporters[reporter] = (clamp(count), now)
            return True
        if self.entries >= self.max_entries:
            return False
        if reporters is None:
            if len(self._rooms) >= self.max_rooms:
                return False
            reporters = self._rooms[room] = {}
        elif len(reporters) >= self.max_reporters:
            return False
        reporters[reporter] = (clamp(count), now)
        self.entries += 1
        return True

    def total(self, room: str, now: float) -> int:
        """The sum of the fresh reports for `room` (0 when none)."""
        reporters = self._rooms.get(room)
        if not reporters:
            return 0
        fresh = self.fresh
        return clamp(sum(n for n, at in reporters.values() if now - at < fresh))

    def totals(self, now: float) -> dict[str, int]:
        """Every room with a fresh report and its sum."""
        self.sweep(now)
        return {room: self.total(room, now) for room in self._rooms}

    def sweep(self, now: float) -> None:
        """Forget stale reports, and rooms left without any."""
        self._swept = now
        fresh = self.fresh
        for room in list(self._rooms):
            reporters = self._rooms[room]
            stale = [r for r, (_, at) in reporters.items() if now - at >= fresh]
            for r in stale:
                del reporters[r]
            self.entries -= len(stale)
            if not reporters:
                del self._rooms[room]
