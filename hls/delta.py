"""A full media playlist from a delta update and an older full copy (draft §6.2.5.1).

A delta update (`_HLS_skip=YES`) replaces the oldest segments with `EXT-X-SKIP`; a client that
holds an earlier full copy fills them back in. An edge does the same, so that a player asking
for the plain playlist gets one as new as the newest delta update, without another request to
the origin. Written here because no library merges LL-HLS playlists as text, and the edge
serves bytes, not parsed objects.

The result is what the origin renders for that state (`packager.playlist.render_media`): the
header and everything after the skip come from the delta update; each skipped segment comes
from the full copy, whole (`EXTINF` and URI, with its discontinuity and program date time),
without part lines, which a full playlist lists only near its end, and `EXT-X-MAP` where the
initialization section changes. None when the full copy does not hold every skipped segment,
or when it holds them on another timeline: the segment after the skip must start, by program
date time, where the last skipped one ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

_SKIP = "#EXT-X-SKIP:SKIPPED-SEGMENTS="
_SEQUENCE = "#EXT-X-MEDIA-SEQUENCE:"
_MAP = "#EXT-X-MAP:"
_PART = "#EXT-X-PART:"
_DISCONTINUITY = "#EXT-X-DISCONTINUITY"
_DISCONTINUITIES = "#EXT-X-DISCONTINUITY-SEQUENCE:"
_PDT = "#EXT-X-PROGRAM-DATE-TIME:"
_EXTINF = "#EXTINF:"
# How far apart (seconds) one segment's end and the next one's start may be by their program
# date times, which are written to the millisecond, and EXTINF, to five decimals.
CONTINUITY_SLACK = 0.05


def expand_delta(full: str, delta: str) -> str | None:
    """The full playlist `delta` stands for, with its skipped segments taken from `full`;
    None when `delta` skips nothing or `full` lacks a segment it skipped."""
    lines = delta.splitlines()
    skip_at = next((i for i, line in enumerate(lines) if line.startswith(_SKIP)), None)
    if skip_at is None or skip_at == 0 or not lines[skip_at - 1].startswith(_MAP):
        return None
    skipped = _int_after(lines[skip_at], _SKIP)
    first = _header(lines, _SEQUENCE)
    if skipped is None or skipped <= 0 or first is None:
        return None
    full_lines = full.splitlines()
    blocks = _segments(full_lines)
    if blocks is None:
        return None
    full_first, held = blocks
    start = first - full_first
    if start < 0 or start + skipped > len(held):
        return None
    taken = held[start:start + skipped]
    # A discontinuity that became the window's first segment is counted in the header's
    # sequence rather than tagged (both copies say how many came before their own window).
    before = (_header(full_lines, _DISCONTINUITIES) or 0) + sum(
        block[:1] == [_DISCONTINUITY] for _, block in held[:start])
    head_map, head_lines = taken[0]
    if head_lines[:1] == [_DISCONTINUITY] \
            and (_header(lines, _DISCONTINUITIES) or 0) == before + 1:
        taken[0] = (head_map, head_lines[1:])
    if not _continues(taken[-1][1], lines[skip_at + 1:]):
        return None  # the full copy is of another timeline (a broadcast that began again)
    out = lines[:skip_at - 1]
    current = taken[0][0]
    out.append(current)
    for seg_map, seg_lines in taken:
        if seg_map != current:
            # As the renderer orders them: a discontinuity, then the new map, then the rest.
            lead = 1 if seg_lines and seg_lines[0] == _DISCONTINUITY else 0
            seg_lines = [*seg_lines[:lead], seg_map, *seg_lines[lead:]]
            current = seg_map
        out.extend(seg_lines)
    tail_map = lines[skip_at - 1]
    if tail_map != current:
        out.append(tail_map)
    out.extend(lines[skip_at + 1:])
    return "\n".join(out) + "\n"


def _continues(last: list[str], tail: list[str]) -> bool:
    """Whether the segment after the skip starts where the last skipped one ends, by their
    program date times (a skip never spans a discontinuity, so the timeline is one)."""
    start = next((line for line in last if line.startswith(_PDT)), None)
    length = next((line for line in last if line.startswith(_EXTINF)), None)
    after = next((line for line in tail if line.startswith(_PDT)), None)
    if start is None or length is None or after is None:
        return False
    try:
        ends = datetime.fromisoformat(start[len(_PDT):]) \
            + timedelta(seconds=float(length[len(_EXTINF):].split(",")[0]))
        begins = datetime.fromisoformat(after[len(_PDT):])
    except ValueError:
        return False
    return abs((begins - ends).total_seconds()) <= CONTINUITY_SLACK


def _segments(lines: list[str]) -> tuple[int, list[tuple[str, list[str]]]] | None:
    """(media sequence, [(map line, the segment's lines without map or part lines)]) of the
    whole segments of a full playlist; None when it is not one."""
    first = _header(lines, _SEQUENCE)
    map_at = next((i for i, line in enumerate(lines) if line.startswith(_MAP)), None)
    if first is None or map_at is None or any(line.startswith(_SKIP) for line in lines):
        return None
    current = lines[map_at]
    held: list[tuple[str, list[str]]] = []
    block: list[str] = []
    block_map = current
    for line in lines[map_at + 1:]:
        if line.startswith(_MAP):
            current = block_map = line
        elif line.startswith(_PART):
            continue
        elif line.startswith("#"):
            block.append(line)
        elif line:
            block.append(line)
            held.append((block_map, block))
            block, block_map = [], current
    return first, held


def _header(lines: list[str], prefix: str) -> int | None:
    """The number a header tag (one before the first EXT-X-MAP) carries; None when the tag is
    absent or its value is not a number."""
    for line in lines:
        if line.startswith(prefix):
            return _int_after(line, prefix)
        if line.startswith(_MAP):
            break
    return None


def _int_after(line: str, prefix: str) -> int | None:
    try:
        return int(line[len(prefix):])
    except ValueError:
        return None
