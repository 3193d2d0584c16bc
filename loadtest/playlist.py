"""What a simulated listener reads from a live media playlist: when each listed part was
captured, and which part to ask for next.

A scan of the whole text (a delta update is a few dozen lines) that keeps only what the
listener needs, cheaper than a full parse: a player reads the same things. Part start times
come from PROGRAM-DATE-TIME plus the durations of the parts before it in the segment, so a
part's delivery delay is its arrival minus the capture time of its last sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"')
_PART_NAME = re.compile(r"p(\d+)\.(\d+)\.m4s$")
_ATTR = re.compile(rb'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(slots=True)
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
    view = LiveView()
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
                view.parts[uri] = (clock, duration)
                clock += duration
        elif line.startswith(b"#EXT-X-PART-INF:"):
            attrs = dict(_ATTR.findall(line[16:]))
            try:
                view.part_target = float(attrs[b"PART-TARGET"])
            except (KeyError, ValueError) as exc:
                raise NotAPlaylist("unreadable PART-INF") from exc
        elif line.startswith(b"#EXT-X-PRELOAD-HINT:"):
            m = _HINT.match(line)
            if m is not None:
                view.hint = m[1].decode()
                name = _PART_NAME.search(view.hint)
                if name is not None:
                    view.hint_msn, view.hint_part = int(name[1]), int(name[2])
        elif line.startswith(b"#EXT-X-ENDLIST"):
            view.ended = True
    return view


def _pdt(value: bytes) -> float:
    try:
        return datetime.fromisoformat(value.strip().decode().replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise NotAPlaylist(f"unreadable PROGRAM-DATE-TIME {value[:40]!r}") from exc
