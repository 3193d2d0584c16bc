"""What a simulated listener reads from a live media playlist: when each listed part was
captured, and which part to ask for next.

A scan of the whole text (a delta update is a few dozen lines) that keeps only what the
listener needs, cheaper than a full parse: a player reads the same things. Part start times
come from PROGRAM-DATE-TIME plus the durations of the parts before it in the segment, so a
part's delivery delay is its arrival minus the capture time of its last sample.

A scan still costs about 75 µs for a delta update of 40 parts, as much as the rest of a
listener's work for that part, and every listener of a rendition in a process is sent the same
bytes. So listeners read through `read_shared`, which scans each distinct text once: a
bounded LRU (`functools.lru_cache`, SHARED_VIEWS texts, its misses counted per report as
`playlists_scanned`). A view is therefore shared and read only (frozen).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

_HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"')
_PART_NAME = re.compile(r"p(\d+)\.(\d+)\.m4s$")
_ATTR = re.compile(rb'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
# Distinct playlist texts whose views are kept: listeners are sent the newest one or two of
# each rendition (plain and delta), so this holds far more than are in use at once.
SHARED_VIEWS = 64


@dataclass(frozen=True, slots=True)
class LiveView:
    """The parts a playlist lists (URI → capture start, duration) and its preload hint."""

    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    hint: str | None = None
    hint_msn: int = -1
    hint_part: int = -1
    part_target: float = 1.0
    ended: bool = False


class NotAPlaylist(ValueError):
    pass


def read_live(body: bytes | bytearray) -> LiveView:
    if not body.startswith(b"#EXTM3U"):
        raise NotAPlaylist("the answer is not an M3U playlist")
    parts: dict[str, tuple[float, float]] = {}
    hint: str | None = None
    hint_msn = hint_part = -1
    part_target = 1.0
    ended = False
    clock: float | None = None
    for line in bytes(body).split(b"\n"):
        if not line.startswith(b"#"):
            continue
        if line.startswith(b"#EXT-X-PROGRAM-DATE-TIME:"):
            clock = _pdt(line[25:])
        elif line.startswith(b"#EXT-X-PART:"):
            attrs = dict(_ATTR.findall(line[12:]))
            try:
                duration = float(attrs[b"DURATION"])
                uri = attrs[b"URI"].strip(b'"').decode()
            except (KeyError, ValueError) as exc:
                raise NotAPlaylist(f"unreadable part line: {line[:80]!r}") from exc
            if clock is not None:
                parts[uri] = (clock, duration)
                clock += duration
        elif line.startswith(b"#EXT-X-PART-INF:"):
            attrs = dict(_ATTR.findall(line[16:]))
            try:
                part_target = float(attrs[b"PART-TARGET"])
            except (KeyError, ValueError) as exc:
                raise NotAPlaylist("unreadable PART-INF") from exc
        elif line.startswith(b"#EXT-X-PRELOAD-HINT:"):
            m = _HINT.match(line)
            if m is not None:
                hint = m[1].decode()
                name = _PART_NAME.search(hint)
                if name is not None:
                    hint_msn, hint_part = int(name[1]), int(name[2])
        elif line.startswith(b"#EXT-X-ENDLIST"):
            ended = True
    return LiveView(parts, hint, hint_msn, hint_part, part_target, ended)


@lru_cache(maxsize=SHARED_VIEWS)
def read_shared(body: bytes) -> LiveView:
    """`read_live`, once per distinct text in this process (see the module docstring)."""
    return read_live(body)


def _pdt(value: bytes) -> float:
    try:
        return datetime.fromisoformat(value.strip().decode().replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise NotAPlaylist(f"unreadable PROGRAM-DATE-TIME {value[:40]!r}") from exc
