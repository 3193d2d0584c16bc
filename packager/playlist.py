"""LL-HLS playlists as a model and pure renderers.

The model holds what a media playlist says: segments with their parts, the parts of the
segment being written, the preload hint and the rendition reports. A room's live playlist
outlives the packager that writes it: when a room resumes after a restart, the segments of
the previous epoch stay in the window, the new epoch starts with `EXT-X-DISCONTINUITY` and
its own `EXT-X-MAP`, and `EXT-X-DISCONTINUITY-SEQUENCE` counts the gaps that slid out.
`render_media` turns the model into text (optionally as a delta update), `parse_media`
reads such text back, and `render_multivariant` lists the renditions. Nothing here touches a
socket or a file.

Every audio part could be a start point, but only a segment's first part is advertised as one
(`INDEPENDENT=YES`). hls.js 1.7 joins and switches renditions at the last advertised part
before its target; joining at part k > 0 leaves parts 0..k-1 of that segment unloaded in the
rendition it plays, and once its fragment tracker counts the segment as buffered anyway (the
other rendition's audio, or a missing 0.21 s part within its 0.2 s tolerance once the AAC edit
list pulls Chromium's buffer 21 ms earlier) it keeps choosing that segment, refuses to reload
it and loads nothing until the segment's parts leave the playlist: a 6-8 s stall at the next
boundary after every mid-segment switch and about one start in nine. Starting at part 0 means
the segment is loaded whole, so it never gets there. The draft makes the attribute optional
(every independent part SHOULD carry it, for joins and switches); the cost is a join fetching
up to one segment of parts before its target, which hls.js then plays from as before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from hls.reach import PlaylistPosition
from packager.ladder import Rendition


@dataclass(frozen=True, slots=True)
class Part:
    duration: float
    uri: str
    independent: bool = True


@dataclass(frozen=True, slots=True)
class Segment:
    msn: int
    duration: float
    uri: str
    start_time: float  # wall-clock seconds since the epoch of its first sample
    parts: tuple[Part, ...] = ()
    map_uri: str | None = None  # its init segment when not the playlist's own
    discontinuity: bool = False  # starts a new epoch: timestamps and encoder restart here


@dataclass(frozen=True, slots=True)
class RenditionReport:
    uri: str
    last_msn: int
    last_part: int


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """One rendition's playlist. `segments` are complete; `partial` belongs to segment
    `next_msn` (the one being written), which starts at `partial_start`."""

    target_duration: int
    part_target: float
    map_uri: str
    segments: tuple[Segment, ...] = ()
    partial: tuple[Part, ...] = ()
    next_msn: int = 1
    partial_start: float = 0.0
    preload_hint: str | None = None
    ended: bool = False
    playlist_type: str | None = None  # None for live, "EVENT" for a recording
    rendition_reports: tuple[RenditionReport, ...] = ()
    low_latency: bool = True
    # Part tags are kept for segments ending within this many seconds of the live edge.
    part_keep_seconds: float = 8.0
    # Discontinuities that have slid out of the window.
    discontinuity_sequence: int = 0
    # The segment being written starts a new epoch (its parts follow a discontinuity).
    partial_discontinuity: bool = False
    # EXT-X-START:TIME-OFFSET of a live playlist, seconds from its end (negative); None: no tag.
    start_offset: float | None = None

    # --- derived positions -------------------------------------------------------------
    @property
    def media_sequence(self) -> int:
        return self.segments[0].msn if self.segments else self.next_msn

    @property
    def part_hold_back(self) -> float:
        # 3 part targets (Apple: at least that), rounded up to a millisecond: what players
        # hold back is most of the latency a listener hears (0.641 s of about 1).
        return math.ceil(round(3 * self.part_target * 1000, 6)) / 1000

    @property
    def can_skip_until(self) -> float:
        return 6.0 * self.target_duration

    def last_position(self) -> tuple[int, int]:
        """(msn, part index) of the newest part; (-1, -1) when nothing exists yet."""
        if self.partial:
            return self.next_msn, len(self.partial) - 1
        if self.segments:
            last = self.segments[-1]
            return last.msn, max(len(last.parts), 1) - 1
        return -1, -1

    def position(self) -> PlaylistPosition:
        """How far this playlist reaches, in the terms the containment rule uses."""
        last_msn = self.segments[-1].msn if self.segments else self.next_msn - 1
        if self.partial:
            part_msn, part_index = self.next_msn, len(self.partial) - 1
        elif self.segments:
            part_msn, part_index = last_msn, len(self.segments[-1].parts) - 1
        else:
            part_msn, part_index = last_msn, -1
        return PlaylistPosition(last_msn, part_msn, part_index, self.ended,
                                float(self.target_duration), False)

    def has_part(self, msn: int, part: int | None) -> bool:
        """Whether the playlist already holds part `part` of segment `msn` (or the whole
        segment when `part` is None): the rule of `hls.reach`."""
        return self.position().contains(msn, part)

    def with_reports(self, reports: tuple[RenditionReport, ...]) -> MediaPlaylist:
        return replace(self, rendition_reports=reports)


def format_pdt(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def format_duration(d: float) -> str:
    # Five decimals keep 1024/48000-sample parts exact enough; trailing zeros trimmed.
    return f"{d:.5f}".rstrip("0").rstrip(".")


def skip_count(pl: MediaPlaylist) -> int:
    """How many of the oldest segments a delta update may replace with EXT-X-SKIP: as many
    as leave at least CAN-SKIP-UNTIL seconds of playlist after the skip, and never a
    discontinuity (a client must see every epoch change it has not seen yet)."""
    remaining = sum(s.duration for s in pl.segments) + sum(p.duration for p in pl.partial)
    n = 0
    for i, seg in enumerate(pl.segments):
        if remaining - seg.duration < pl.can_skip_until:
            break
        following = pl.segments[i + 1] if i + 1 < len(pl.segments) else None
        if following is None or following.discontinuity:
            break
        remaining -= seg.duration
        n += 1
    return n


def render_media(pl: MediaPlaylist, skip: bool = False) -> str:
    """Render a media playlist; with `skip`, a delta update (draft §6.2.5.1)."""
    ll = pl.low_latency
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{9 if ll else 6}",
        f"#EXT-X-TARGETDURATION:{pl.target_duration}",
    ]
    if pl.playlist_type:
        lines.append(f"#EXT-X-PLAYLIST-TYPE:{pl.playlist_type}")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{pl.media_sequence}")
    if pl.discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{pl.discontinuity_sequence}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if pl.start_offset is not None and not pl.ended and pl.playlist_type is None:
        lines.append(f"#EXT-X-START:TIME-OFFSET={format_duration(pl.start_offset)}")
    if ll:
        lines.append(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={format_duration(pl.part_hold_back)},CAN-SKIP-UNTIL={format_duration(pl.can_skip_until)}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={format_duration(pl.part_target)}")

    segments = pl.segments
    skipped = skip_count(pl) if (skip and ll and not pl.ended) else 0
    current_map = (segments[skipped].map_uri if len(segments) > skipped else None) or pl.map_uri
    lines.append(f'#EXT-X-MAP:URI="{current_map}"')
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
        segments = segments[skipped:]

    # Part tags only near the live edge; older segments are listed whole.
    total = sum(s.duration for s in pl.segments) + sum(p.duration for p in pl.partial)
    elapsed = sum(s.duration for s in pl.segments[:skipped])
    for seg in segments:
        elapsed += seg.duration
        if seg.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        seg_map = seg.map_uri or pl.map_uri
        if seg_map != current_map:
            current_map = seg_map
            lines.append(f'#EXT-X-MAP:URI="{seg_map}"')
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(seg.start_time)}")
        if ll and total - elapsed <= pl.part_keep_seconds:
            lines.extend(_part_line(p, i == 0) for i, p in enumerate(seg.parts))
        lines.append(f"#EXTINF:{format_duration(seg.duration)},")
        lines.append(seg.uri)

    if ll and not pl.ended:
        if pl.partial:
            if pl.partial_discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if pl.map_uri != current_map:
                lines.append(f'#EXT-X-MAP:URI="{pl.map_uri}"')
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(pl.partial_start)}")
            lines.extend(_part_line(p, i == 0) for i, p in enumerate(pl.partial))
        if pl.preload_hint:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{pl.preload_hint}"')
        for r in pl.rendition_reports:
            lines.append(
                f'#EXT-X-RENDITION-REPORT:URI="{r.uri}",LAST-MSN={r.last_msn},LAST-PART={r.last_part}'
            )
    if pl.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _part_line(p: Part, starts_segment: bool) -> str:
    # A start point only where a segment starts: see the module docstring.
    ind = ",INDEPENDENT=YES" if p.independent and starts_segment else ""
    return f'#EXT-X-PART:DURATION={format_duration(p.duration)},URI="{p.uri}"{ind}'


@dataclass(frozen=True, slots=True)
class Variant:
    rendition: Rendition
    uri: str


def render_multivariant(variants: list[Variant]) -> str:
    """The room's entry point: one EXT-X-STREAM-INF per rendition, CODECS on each."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in variants:
        r = v.rendition
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth},AVERAGE-BANDWIDTH={r.kbps * 1000},"
            f'CODECS="{r.codecs_attr}",NAME="{r.name}"'
        )
        lines.append(v.uri)
    return "\n".join(lines) + "\n"


def target_duration_for(segment_seconds: float) -> int:
    """EXT-X-TARGETDURATION: the longest segment rounded half up to whole seconds."""
    return max(1, math.floor(segment_seconds + 0.5))


@dataclass(slots=True)
class PlaylistBuilder:
    """Mutable companion that the packager advances part by part; each call returns the
    new immutable MediaPlaylist. Only the live window is kept: the recording is written
    elsewhere, segment by segment (`packager.recording`)."""

    playlist: MediaPlaylist
    window: int

    def add_part(self, part: Part, start_time: float, next_hint: str | None) -> MediaPlaylist:
        pl = self.playlist
        partial_start = pl.partial_start if pl.partial else start_time
        self.playlist = replace(pl, partial=pl.partial + (part,), partial_start=partial_start,
                                preload_hint=next_hint)
        return self.playlist

    def close_segment(self, uri: str, next_hint: str | None) -> MediaPlaylist:
        pl = self.playlist
        seg = Segment(pl.next_msn, sum(p.duration for p in pl.partial), uri, pl.partial_start,
                      pl.partial, discontinuity=pl.partial_discontinuity)
        segments = pl.segments + (seg,)
        sequence = pl.discontinuity_sequence
        while len(segments) > self.window:
            segments = segments[1:]
            if segments[0].discontinuity:
                # The gap is now before the window: count it instead of tagging it.
                sequence += 1
                segments = (replace(segments[0], discontinuity=False),) + segments[1:]
        self.playlist = replace(pl, segments=segments, partial=(), next_msn=seg.msn + 1,
                                preload_hint=next_hint, discontinuity_sequence=sequence,
                                partial_discontinuity=False)
        return self.playlist

    def end(self) -> MediaPlaylist:
        self.playlist = replace(self.playlist, ended=True, preload_hint=None, partial=(),
                                partial_discontinuity=False)
        return self.playlist


def resume_window(previous: MediaPlaylist | None, first_msn: int, map_uri: str,
                  base: MediaPlaylist) -> MediaPlaylist:
    """The playlist a new epoch starts from: `base` (empty, with this epoch's settings)
    carrying the previous epoch's window when it ends right before `first_msn`, so players
    polling the same URL see the room go on after a discontinuity."""
    if previous is None or not previous.segments or previous.segments[-1].msn + 1 != first_msn:
        gap = 1 if previous is not None and previous.segments else 0
        sequence = (previous.discontinuity_sequence if previous is not None else 0) + gap
        return replace(base, next_msn=first_msn, map_uri=map_uri, discontinuity_sequence=sequence)
    segments = tuple(replace(seg, map_uri=seg.map_uri or previous.map_uri)
                     for seg in previous.segments)
    return replace(base, segments=segments, next_msn=first_msn, map_uri=map_uri,
                   discontinuity_sequence=previous.discontinuity_sequence,
                   partial_discontinuity=True)


class PlaylistParseError(ValueError):
    """Text that is not a media playlist this module wrote."""


def parse_media(text: str) -> MediaPlaylist:
    """Read back a media playlist written by `render_media` (complete segments only: the
    parts of an unfinished segment and the hints are dropped)."""
    target = 0
    part_target = 0.0
    sequence = 1
    dseq = 0
    map_uri = ""
    current_map = ""
    segments: list[Segment] = []
    parts: list[Part] = []
    pdt: float | None = None
    duration: float | None = None
    disc = False
    ended = False
    try:
        lines = text.splitlines()
        if not lines or lines[0] != "#EXTM3U":
            raise PlaylistParseError("not an M3U playlist")
        for line in lines[1:]:
            if not line:
                continue
            tag, _, value = line.partition(":")
            if tag == "#EXT-X-TARGETDURATION":
                target = int(value)
            elif tag == "#EXT-X-PART-INF":
                part_target = float(_attrs(value)["PART-TARGET"])
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                sequence = int(value)
            elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
                dseq = int(value)
            elif tag == "#EXT-X-MAP":
                current_map = _attrs(value)["URI"]
                map_uri = map_uri or current_map
            elif tag == "#EXT-X-DISCONTINUITY":
                disc = True
            elif tag == "#EXT-X-SKIP":
                raise PlaylistParseError("a delta update does not hold the whole window")
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = datetime.fromisoformat(value).timestamp()
            elif tag == "#EXT-X-PART":
                a = _attrs(value)
                # Only a segment's first part says whether it is independent; the rest
                # were written like it (see `_part_line`).
                independent = parts[0].independent if parts else a.get("INDEPENDENT") == "YES"
                parts.append(Part(float(a["DURATION"]), a["URI"], independent))
            elif tag == "#EXTINF":
                duration = float(value.split(",")[0])
            elif tag == "#EXT-X-ENDLIST":
                ended = True
            elif not line.startswith("#"):
                if duration is None or pdt is None:
                    raise PlaylistParseError(f"segment {line!r} lacks EXTINF or PROGRAM-DATE-TIME")
                msn = sequence + len(segments)
                segments.append(Segment(msn, duration, line, pdt, tuple(parts),
                                        map_uri=current_map if current_map != map_uri else None,
                                        discontinuity=disc and bool(segments)))
                parts, duration, disc = [], None, False
                pdt = None
    except (KeyError, ValueError) as exc:
        raise PlaylistParseError(f"unreadable playlist: {exc}") from exc
    if not target or not map_uri:
        raise PlaylistParseError("playlist lacks EXT-X-TARGETDURATION or EXT-X-MAP")
    first_map = map_uri
    return MediaPlaylist(target, part_target or 1.0, first_map, tuple(segments),
                         next_msn=sequence + len(segments), ended=ended,
                         discontinuity_sequence=dseq)


def _attrs(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ATTR.finditer(value):
        out[m[1]] = m[2][1:-1] if m[2].startswith('"') else m[2]
    return out


_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
