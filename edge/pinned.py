"""Pinned live playlists: the newest copy of each live media playlist the edge has seen.

They answer blocking requests locally, say how far a rendition reaches (so requests beyond it
are refused without asking upstream) and are the last good copy while the upstream fails.
Their bytes count against the cache bound: `PinnedPlaylists` reserves them in the LRU and
drops the least recently refreshed playlists once they pass their own share of it.
"""

from __future__ import annotations

from collections import OrderedDict

from edge.entry import Entry
from edge.lru import ByteLRU
from edge.targets import Target
from hls.reach import PlaylistPosition


class PinnedPlaylist:
    """The newest full and delta copies of one live playlist and how far they reach."""

    __slots__ = ("full", "full_pos", "delta", "delta_pos", "touched", "reach", "reach_born",
                 "part_target", "epoch")

    def __init__(self) -> None:
        self.full: Entry | None = None
        self.full_pos: PlaylistPosition | None = None
        self.delta: Entry | None = None
        self.delta_pos: PlaylistPosition | None = None
        self.touched = 0.0
        # The furthest position any held copy (full or delta) reached, and when that copy
        # was made: far-future checks must measure against the newest knowledge we have.
        self.reach: PlaylistPosition | None = None
        self.reach_born = 0.0
        self.part_target = 0.0
        self.epoch: str | None = None

    def update(self, entry: Entry, pos: PlaylistPosition | None, now: float) -> bool:
        """Keep `entry` if it reaches further than what is held; True if it was kept."""
        self.touched = now
        if pos is not None and (self.reach is None or not self.reach.newer_than(pos)):
            self.reach, self.reach_born = pos, now
            self.part_target, self.epoch = pos.part_target, pos.epoch
        if pos is not None and pos.delta:
            if self.delta_pos is None or not self.delta_pos.newer_than(pos):
                self.delta, self.delta_pos = entry, pos
                return True
            return False
        if self.full_pos is None or pos is None or not self.full_pos.newer_than(pos):
            self.full, self.full_pos = entry, pos
            return True
        return False

    def answer(self, t: Target) -> Entry | None:
        """The newest held playlist containing what `t` asks for (full ones serve skips too)."""
        assert t.msn is not None
        if t.skip is not None and self.delta is not None and self.delta_pos is not None:
            if self.delta_pos.contains(t.msn, t.part) and (
                self.full_pos is None or not self.full_pos.newer_than(self.delta_pos)
            ):
                return self.delta
        if self.full is not None and self.full_pos is not None:
            if self.full_pos.contains(t.msn, t.part):
                return self.full
        return None

    @property
    def ended(self) -> bool:
        return self.reach is not None and self.reach.ended

    def current(self, t: Target) -> Entry | None:
        """The held copy answering a plain (or delta) request for `t` that reaches as far as
        anything seen, or None: a copy behind what players were already given would move
        them back (hls.js seeks back into its buffer and replays it)."""
        reach = self.reach
        if reach is None:
            return None
        if t.skip is not None and self.delta is not None and self.delta_pos is not None \
                and not reach.newer_than(self.delta_pos):
            return self.delta
        if self.full is not None and self.full_pos is not None \
                and not reach.newer_than(self.full_pos):
            return self.full
        return None

    @property
    def size(self) -> int:
        return (self.full.size if self.full else 0) + (self.delta.size if self.delta else 0)


class PinnedPlaylists:
    """Pinned playlists by path, least recently refreshed first, their bytes reserved in `lru`
    and kept below `max_bytes`."""

    def __init__(self, lru: ByteLRU, max_bytes: int) -> None:
        self.lru = lru
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0
        self._pins: OrderedDict[str, PinnedPlaylist] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, path: str) -> PinnedPlaylist | None:
        return self._pins.get(path)

    def update(self, path: str, entry: Entry, pos: PlaylistPosition | None,
               now: float) -> PinnedPlaylist | None:
        """Offer a fresh playlist; the pinned playlist when `entry` was kept, else None."""
        pinned = self._pins.get(path)
        if pinned is None:
            pinned = self._pins[path] = PinnedPlaylist()
        else:
            self._pins.move_to_end(path)
        before = pinned.size
        kept = pinned.update(entry, pos, now)
        self._account(pinned.size - before)
        while self.bytes > self.max_bytes and len(self._pins) > 1:
            self._drop(next(iter(self._pins)))
        return pinned if kept and path in self._pins else None

    def sweep(self, now: float, limit: float) -> None:
        """Forget playlists of rooms that stopped updating."""
        for path in [p for p, pin in self._pins.items() if now - pin.touched > limit]:
            self._drop(path)

    def _drop(self, path: str) -> None:
        pinned = self._pins.pop(path)
        self._account(-pinned.size)
        self.dropped += 1

    def _account(self, delta: int) -> None:
        if delta:
            self.bytes += delta
            self.lru.reserve(delta)
