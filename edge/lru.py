"""A byte-bounded LRU of cache entries, with room set aside for what is held outside it."""

from __future__ import annotations

from collections import OrderedDict

from edge.entry import Entry


class ByteLRU:
    """Entries by key, least recently used evicted first once their sizes, plus the `reserved`
    bytes held elsewhere under the same bound (pinned playlists), pass `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.reserved = 0
        self.evictions = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total(self) -> int:
        return self.bytes + self.reserved

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def peek(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        # One object larger than an eighth of the cache would flush everything else.
        if entry.size > self.max_bytes // 8:
            return
        self._entries[key] = entry
        self.bytes += entry.size
        self._evict()

    def reserve(self, delta: int) -> None:
        """Grow (or shrink) the bytes held outside the LRU, evicting entries to make room."""
        self.reserved += delta
        self._evict()

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def _evict(self) -> None:
        entries = self._entries
        while self.bytes + self.reserved > self.max_bytes and entries:
            _, evicted = entries.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1
