"""LL-HLS playlists as a model and pure renderers.

The model holds what a media playlist says: segments with their parts, the parts of the
segment being written, the preload hint and the rendition reports. `render_media` turns it
into text (optionally as a delta update) and `render_multivariant` lists the renditions.
Nothing here touches a socket or a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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

    # --- derived positions -------------------------------------------------------------
    @property
    def media_sequence(self) -> int:
        return self.segments[0].msn if self.segments else self.next_msn

    @property
    def part_hold_back(self) -> float:
        # At least 3 part targets (Apple: must); a full second leaves edges in a chain and
        # busy machines room for jitter while staying far under the 2 s latency goal.
        return max(round(3 * self.part_target, 3), 1.0)

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


def _dur(d: float) -> str:
    # Five decimals keep 1024/48000-sample parts exact enough; trailing zeros trimmed.
    return f"{d:.5f}".rstrip("0").rstrip(".")


def skip_count(pl: MediaPlaylist) -> int:
    """How many of the oldest segments a delta update may replace with EXT-X-SKIP: as many
    as leave at least CAN-SKIP-UNTIL seconds of playlist after the skip."""
    remaining = sum(s.duration for s in pl.segments) + sum(p.duration for p in pl.partial)
    n = 0
    for seg in pl.segments:
        if remaining - seg.duration < pl.can_skip_until:
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
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if ll:
        lines.append(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={_dur(pl.part_hold_back)},CAN-SKIP-UNTIL={_dur(pl.can_skip_until)}"
        )
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={_dur(pl.part_target)}")
    lines.append(f'#EXT-X-MAP:URI="{pl.map_uri}"')

    segments = pl.segments
    skipped = skip_count(pl) if (skip and ll and not pl.ended) else 0
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
        segments = segments[skipped:]

    # Part tags only near the live edge; older segments are listed whole.
    total = sum(s.duration for s in pl.segments) + sum(p.duration for p in pl.partial)
    elapsed = sum(s.duration for s in pl.segments[:skipped])
    for seg in segments:
        elapsed += seg.duration
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(seg.start_time)}")
        if ll and total - elapsed <= pl.part_keep_seconds:
            lines.extend(_part_line(p) for p in seg.parts)
        lines.append(f"#EXTINF:{_dur(seg.duration)},")
        lines.append(seg.uri)

    if ll and not pl.ended:
        if pl.partial:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(pl.partial_start)}")
            lines.extend(_part_line(p) for p in pl.partial)
        if pl.preload_hint:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{pl.preload_hint}"')
        for r in pl.rendition_reports:
            lines.append(
                f'#EXT-X-RENDITION-REPORT:URI="{r.uri}",LAST-MSN={r.last_msn},LAST-PART={r.last_part}'
            )
    if pl.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _part_line(p: Part) -> str:
    ind = ",INDEPENDENT=YES" if p.independent else ""
    return f'#EXT-X-PART:DURATION={_dur(p.duration)},URI="{p.uri}"{ind}'


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
    new immutable MediaPlaylist."""

    playlist: MediaPlaylist
    window: int
    all_segments: list[Segment] = field(default_factory=list)

    def add_part(self, part: Part, start_time: float, next_hint: str | None) -> MediaPlaylist:
        pl = self.playlist
        partial_start = pl.partial_start if pl.partial else start_time
        self.playlist = replace(pl, partial=pl.partial + (part,), partial_start=partial_start,
                                preload_hint=next_hint)
        return self.playlist

    def close_segment(self, uri: str, next_hint: str | None) -> MediaPlaylist:
        pl = self.playlist
        seg = Segment(pl.next_msn, sum(p.duration for p in pl.partial), uri, pl.partial_start,
                      pl.partial)
        self.all_segments.append(seg)
        segments = (pl.segments + (seg,))[-self.window :]
        self.playlist = replace(pl, segments=segments, partial=(), next_msn=seg.msn + 1,
                                preload_hint=next_hint)
        return self.playlist

    def end(self) -> MediaPlaylist:
        self.playlist = replace(self.playlist, ended=True, preload_hint=None, partial=())
        return self.playlist

    def recording(self) -> MediaPlaylist:
        """The whole broadcast so far, as an EVENT playlist (with ENDLIST once ended)."""
        return replace(self.playlist, segments=tuple(self.all_segments), partial=(),
                       preload_hint=None, playlist_type="EVENT", low_latency=False,
                       rendition_reports=())
