"""How far a media playlist reaches, and the rules that compare a request with it.

`PlaylistPosition.contains` is the one statement of draft §6.2.5.2 ("does this playlist hold
part N of segment M?"): the origin asks it of the playlist it is building and the edge of the
text it cached (`parse_position`), so both release a blocking request at the same moment.
`too_far` and `part_too_far` say which requests are refused at once with 400, and
`part_object_too_far` which part names cannot exist (404 at once): the origin and the edge
both apply them, from nothing but the playlist's TARGETDURATION and PART-TARGET.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_PART_INF = b"#EXT-X-PART-INF:"
_MAP = b'#EXT-X-MAP:URI="'


@dataclass(frozen=True, slots=True)
class PlaylistPosition:
    """How far a media playlist reaches: its last complete segment and its last listed part."""

    last_msn: int  # last complete segment, -1 if none yet
    part_msn: int  # segment of the last listed part (last_msn + 1 while a segment is open)
    part_index: int  # index of that part, -1 if the playlist lists no parts
    ended: bool
    target_duration: float
    delta: bool
    part_target: float = 0.0  # EXT-X-PART-INF PART-TARGET, 0 when absent
    epoch: str | None = None  # folder of the last EXT-X-MAP URI (`e{n}-{tag}`), if relative

    def contains(self, msn: int, part: int | None) -> bool:
        """Whether this playlist satisfies `_HLS_msn=msn[&_HLS_part=part]` (§6.2.5.2)."""
        if self.ended:
            return True
        if part is None:
            return msn <= self.last_msn
        if self.part_index < 0:
            return msn <= self.last_msn
        # A part past a segment's last one means part 0 of the next segment: the
        # lexicographic comparison below gives exactly that.
        return msn < self.part_msn or (msn == self.part_msn and part <= self.part_index)

    def too_far(self, msn: int, slack: int = 0) -> bool:
        """Whether `msn` is more than two segments (plus `slack`) past the segment being
        written (→ 400; draft §6.2.5.2)."""
        return not self.ended and msn > max(self.part_msn, self.last_msn + 1) + 2 + slack

    def newer_than(self, other: PlaylistPosition) -> bool:
        if self.ended != other.ended:
            return self.ended
        return (self.part_msn, self.part_index, self.last_msn) > (
            other.part_msn,
            other.part_index,
            other.last_msn,
        )


def segments_since(elapsed: float, target_duration: float) -> int:
    """The most segments a live playlist can have added in `elapsed` seconds, for judging a
    request against a copy made that long ago. Segments are counted as lasting half the
    target duration: the rounded TARGETDURATION bounds them from above only, and real ones
    run short of it (the packager's last 1.92 s under TD 2, so counting whole target
    durations fell one segment behind every 48 s and, after two minutes, refused requests
    for the real live edge)."""
    if elapsed <= 0 or target_duration <= 0:
        return 0
    return math.ceil(elapsed / (0.5 * target_duration))


def max_parts_per_segment(target_duration: float, part_target: float) -> int:
    """The most parts any segment of a playlist can hold, from its EXT-X-TARGETDURATION and
    PART-TARGET alone (the edge knows nothing else).

    A segment lasts less than TD + ½ s (TD is the longest segment rounded half up), and every
    part but a segment's last lasts at least 85 % of PART-TARGET (draft §4.4.4.9), so at most
    ⌊(TD + ½) / (0.85 × PART-TARGET)⌋ parts come before the last one. For TD 2 s and a
    PART-TARGET of 0.21334 s that is 14 (the packager cuts 9 or 10)."""
    if part_target <= 0 or target_duration <= 0:
        raise ValueError("target duration and part target must be positive")
    return math.floor((target_duration + 0.5) / (0.85 * part_target)) + 1


def part_too_far(part: int, target_duration: float, part_target: float) -> bool:
    """Whether `_HLS_part=part` asks for more than a segment can hold (→ 400 at once). The
    index one past a segment's last part is a real request (part 0 of the next segment)."""
    return part > max_parts_per_segment(target_duration, part_target)


def part_object_too_far(part: int, target_duration: float, part_target: float) -> bool:
    """Whether a part object `p<msn>.<part>.m4s` can never exist: no playlist hints an
    index a segment cannot hold (→ 404 at once, without holding it or reading the store)."""
    return part >= max_parts_per_segment(target_duration, part_target)


def parse_position(body: bytes) -> PlaylistPosition | None:
    """Read a media playlist's reach; None for multivariant or unparseable playlists."""
    if not body.startswith(b"#EXTM3U"):
        return None
    try:
        return _position(body)
    except ValueError:
        return None  # a number that is not one: no reach to speak of


def _position(body: bytes) -> PlaylistPosition | None:
    """One pass over the lines; raises ValueError on a number that is not one."""
    media_sequence = 0
    segments = 0
    parts_open = 0  # parts listed after the last segment URI
    parts_closed = 0  # parts of the last complete segment
    target = -1.0
    ended = False
    delta = False
    part_target = 0.0
    epoch: str | None = None
    for line in body.split(b"\n"):
        if not line:
            continue
        if line[0] != 35:  # not '#': a segment URI closes the open segment
            segments += 1
            parts_closed = parts_open
            parts_open = 0
        elif line.startswith(b"#EXT-X-PART:"):
            parts_open += 1
        elif line.startswith(b"#EXT-X-MEDIA-SEQUENCE:"):
            media_sequence = int(line[22:].strip())
        elif line.startswith(b"#EXT-X-TARGETDURATION:"):
            target = float(line[22:].strip())
        elif line.startswith(b"#EXT-X-SKIP:"):
            delta = True
            for attr in line[12:].split(b","):
                name, _, value = attr.partition(b"=")
                if name.strip() == b"SKIPPED-SEGMENTS":
                    segments += int(value)
        elif line.startswith(b"#EXT-X-ENDLIST"):
            ended = True
        elif line.startswith(_PART_INF):
            part_target = _attribute_float(line[len(_PART_INF):], b"PART-TARGET")
        elif line.startswith(_MAP):
            uri = line[len(_MAP):].split(b'"', 1)[0]
            folder, slash, _ = uri.rpartition(b"/")
            epoch = folder.decode("ascii", "replace") if slash and b"/" not in folder else None
    if not 0 <= target < math.inf:  # absent, negative or NaN
        return None
    last_msn = media_sequence + segments - 1
    if parts_open:
        part_msn, part_index = last_msn + 1, parts_open - 1
    else:
        part_msn, part_index = last_msn, parts_closed - 1
    return PlaylistPosition(last_msn, part_msn, part_index, ended, target, delta, part_target,
                            epoch)


def _attribute_float(attrs: bytes, wanted: bytes) -> float:
    """A decimal attribute of a tag's attribute list, 0 when absent."""
    for attr in attrs.split(b","):
        name, _, value = attr.partition(b"=")
        if name.strip() == wanted:
            return float(value)
    return 0.0
