"""Playlist rendering from the model: golden text, delta updates and blocking positions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from packager.ladder import LadderError, parse_ladder
from packager.playlist import (
    MediaPlaylist,
    Part,
    PlaylistBuilder,
    PlaylistParseError,
    RenditionReport,
    Variant,
    parse_media,
    render_media,
    render_multivariant,
    resume_window,
    skip_count,
    target_duration_for,
)
from packager.settings import PackagerSettings
from tests.support.llhls import check_media_playlist, check_multivariant

GOLDEN = Path(__file__).parent / "golden"
T0 = 1_790_000_000.0  # a fixed wall clock for the golden files
PART = 1024 * 10 / 48000


def _live(segments: int, partial: int) -> MediaPlaylist:
    b = PlaylistBuilder(MediaPlaylist(2, 0.24, "init.mp4", preload_hint="p1.0.m4s"), window=15)
    t = T0
    for msn in range(1, segments + 2):
        n = 9 if msn <= segments else partial
        for i in range(n):
            last = i == 8
            hint = f"p{msn + 1}.0.m4s" if last else f"p{msn}.{i + 1}.m4s"
            b.add_part(Part(PART, f"p{msn}.{i}.m4s"), t, hint)
            t += PART
        if msn <= segments:
            b.close_segment(f"s{msn}.m4s", f"p{msn + 1}.0.m4s")
    return b.playlist.with_reports((RenditionReport("../aac48/live.m3u8", segments + 1, partial - 1),
                                    RenditionReport("../opus64/live.m3u8", segments + 1, partial - 2)))


def test_live_playlist_matches_golden_text() -> None:
    text = render_media(_live(3, 4))
    assert text == (GOLDEN / "live.m3u8").read_text()
    pos = check_media_playlist(text)
    assert (pos.last_msn, pos.last_part, pos.hint) == (4, 3, "p4.4.m4s")


def test_delta_update_matches_golden_text() -> None:
    pl = _live(10, 2)
    text = render_media(pl, skip=True)
    assert text == (GOLDEN / "delta.m3u8").read_text()
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=3" in text
    check_media_playlist(text)


def test_skip_never_reaches_into_the_last_six_target_durations() -> None:
    pl = _live(10, 2)
    n = skip_count(pl)
    remaining = sum(s.duration for s in pl.segments[n:]) + sum(p.duration for p in pl.partial)
    assert remaining >= pl.can_skip_until
    assert remaining - pl.segments[n].duration < pl.can_skip_until, "skips as much as allowed"
    assert skip_count(_live(3, 0)) == 0


def _start_points(text: str) -> list[list[bool]]:
    """For each segment listed with parts (the one being written included), whether each of
    its parts carries INDEPENDENT=YES."""
    out: list[list[bool]] = []
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:"):
            if line.split('"')[1].endswith(".0.m4s"):
                out.append([])
            out[-1].append("INDEPENDENT=YES" in line)
    return out


@pytest.mark.parametrize("skip", [False, True])
def test_only_a_segments_first_part_is_offered_as_a_start_point(skip: bool) -> None:
    # hls.js 1.7 joins or switches at the last INDEPENDENT part before its target; from a
    # part past a segment's first it stalled 6-8 s at the segment's end (packager.playlist).
    text = render_media(_live(10, 4), skip=skip)
    segments = _start_points(text)
    assert len(segments) >= 4, "complete segments and the one being written list parts"
    assert all(flags == [True] + [False] * (len(flags) - 1) for flags in segments), segments
    check_media_playlist(text)


def test_reading_a_playlist_back_keeps_its_parts_independent() -> None:
    back = parse_media(render_media(_live(5, 3)))
    parts = [p for s in back.segments for p in s.parts]
    assert parts and all(p.independent for p in parts)
    again = _start_points(render_media(back))
    assert again and all(flags == [True] + [False] * (len(flags) - 1) for flags in again)


def test_ended_playlist_has_endlist_and_no_hint() -> None:
    b = PlaylistBuilder(_live(3, 0), window=15)
    text = render_media(b.end())
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "PRELOAD-HINT" not in text and "RENDITION-REPORT" not in text
    check_media_playlist(text)


def test_the_window_slides_and_keeps_no_more_than_it_shows() -> None:
    b = PlaylistBuilder(MediaPlaylist(2, 0.24, "init.mp4"), window=7)
    for msn in range(1, 21):
        b.add_part(Part(1.92, f"p{msn}.0.m4s"), T0 + msn, None)
        b.close_segment(f"s{msn}.m4s", None)
    assert [s.msn for s in b.playlist.segments] == list(range(14, 21)), "the live window slides"
    assert not hasattr(b, "all_segments"), "the recording is written elsewhere, not held here"


def _resumed(first_msn: int) -> MediaPlaylist:
    """A room that ran segments 1..3 in epoch e1 and resumes in epoch e2 at `first_msn`."""
    old = replace(_live(3, 0), map_uri="e1/init.mp4")
    base = MediaPlaylist(2, 0.24, "e2/init.mp4", preload_hint=f"e2/p{first_msn}.0.m4s")
    return resume_window(parse_media(render_media(old)), first_msn, "e2/init.mp4", base)


def test_a_resumed_room_keeps_its_window_and_marks_the_gap() -> None:
    b = PlaylistBuilder(_resumed(4), window=15)
    b.add_part(Part(PART, "e2/p4.0.m4s"), T0 + 100, "e2/p4.1.m4s")
    text = render_media(b.playlist)
    pos = check_media_playlist(text.replace("e1/", "").replace("e2/", ""), renditions=1)
    assert pos.last_msn == 4
    assert text.index('#EXT-X-MAP:URI="e1/init.mp4"') < text.index("s1.m4s")
    gap = text.index("#EXT-X-DISCONTINUITY\n")
    assert text.index("s3.m4s") < gap < text.index('#EXT-X-MAP:URI="e2/init.mp4"') < text.index(
        "e2/p4.0.m4s")
    # The segment the parts belong to carries the discontinuity once it is whole.
    pl = b.close_segment("e2/s4.m4s", "e2/p5.0.m4s")
    assert pl.segments[-1].discontinuity and text.count("#EXT-X-DISCONTINUITY\n") == 1
    assert "DISCONTINUITY-SEQUENCE" not in render_media(pl)


def test_a_gap_that_slides_out_of_the_window_is_counted() -> None:
    b = PlaylistBuilder(_resumed(4), window=3)
    for msn in range(4, 8):
        b.add_part(Part(1.92, f"e2/p{msn}.0.m4s"), T0 + 100 + msn, None)
        b.close_segment(f"e2/s{msn}.m4s", None)
    text = render_media(b.playlist)
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in text and "#EXT-X-DISCONTINUITY\n" not in text
    assert text.count("#EXT-X-MAP") == 1 and 'URI="e2/init.mp4"' in text


def test_resuming_after_lost_segments_starts_a_fresh_window() -> None:
    pl = _resumed(9)  # segments 4..8 never reached the store
    assert not pl.segments and pl.next_msn == 9 and pl.discontinuity_sequence == 1
    assert "#EXT-X-MEDIA-SEQUENCE:9" in render_media(pl)


def test_delta_updates_never_skip_a_discontinuity() -> None:
    b = PlaylistBuilder(_resumed(4), window=15)
    for msn in range(4, 14):
        for i in range(9):
            b.add_part(Part(PART, f"e2/p{msn}.{i}.m4s"), T0 + msn, None)
        b.close_segment(f"e2/s{msn}.m4s", None)
    pl = b.playlist
    n = skip_count(pl)
    assert n == 2, "the old epoch's segments before its last may go, as far as the gap"
    assert not any(seg.discontinuity for seg in pl.segments[: n + 1])
    delta = render_media(pl, skip=True)
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=2" in delta and "#EXT-X-DISCONTINUITY\n" in delta
    assert delta.index('URI="e1/init.mp4"') < delta.index("#EXT-X-SKIP")


def test_parse_media_reads_back_what_render_media_wrote() -> None:
    pl = _live(5, 3)
    back = parse_media(render_media(pl))
    assert [s.msn for s in back.segments] == [s.msn for s in pl.segments]
    assert [s.uri for s in back.segments] == [s.uri for s in pl.segments]
    assert all(abs(a.start_time - b.start_time) < 1e-3 for a, b in zip(back.segments, pl.segments,
                                                                         strict=True))
    assert back.next_msn == 6 and not back.partial, "an unfinished segment is not carried"
    with pytest.raises(PlaylistParseError):
        parse_media(render_media(_live(10, 2), skip=True))


@pytest.mark.parametrize("msn,part,expected", [
    (4, 0, True), (4, 3, True), (4, 4, False),   # in the segment being written
    (3, 8, True), (3, 9, True),                  # past the end of a complete segment → 4.0
    (5, 0, False), (1, None, True), (4, None, False),
])
def test_has_part_follows_blocking_reload_rules(msn: int, part: int | None, expected: bool) -> None:
    assert _live(3, 4).has_part(msn, part) is expected


def test_part_past_the_last_of_a_segment_waits_for_the_next_segment() -> None:
    pl = _live(3, 0)
    assert not pl.has_part(3, 9)
    assert replace(pl, partial=(Part(PART, "p4.0.m4s"),)).has_part(3, 9)


def test_multivariant_lists_codecs_for_every_rendition() -> None:
    ladder = parse_ladder("aac96:aac:96:2,aac48:aac:48:2,opus64:opus:64:2")
    text = render_multivariant([Variant(r, f"b/{r.name}/live.m3u8") for r in ladder])
    assert text == (GOLDEN / "master.m3u8").read_text()
    assert check_multivariant(text) == [f"b/{r.name}/live.m3u8" for r in ladder]
    # The registered codecs string is lower case (`Opus` is only the sample entry's 4CC).
    assert 'CODECS="opus"' in text and "Opus" not in text


def test_live_playlist_can_tell_classic_players_where_to_start() -> None:
    pl = replace(_live(10, 2), start_offset=-6.0)
    text = render_media(pl)
    lines = text.splitlines()
    # Before the first segment (draft §4.4.2.2), 3 target durations from the end.
    assert lines.index("#EXT-X-START:TIME-OFFSET=-6") < lines.index('#EXT-X-MAP:URI="init.mp4"')
    # Delta updates keep it and keep working; an ended playlist drops it.
    delta = render_media(pl, skip=True)
    assert "#EXT-X-START:TIME-OFFSET=-6" in delta and "#EXT-X-SKIP:SKIPPED-SEGMENTS=3" in delta
    check_media_playlist(delta)
    ended = PlaylistBuilder(pl, window=15).end()
    assert "EXT-X-START" not in render_media(ended)
    assert "EXT-X-START" not in render_media(_live(10, 2))


def test_live_start_offset_setting_keeps_to_three_target_durations() -> None:
    assert PackagerSettings().live_start_target_durations == 0
    assert PackagerSettings(live_start_target_durations=3).live_start_target_durations == 3
    with pytest.raises(ValueError, match="at least 3"):
        PackagerSettings(live_start_target_durations=2)


@pytest.mark.parametrize("text", ["", "a:mp3:96", "a:aac", "a:aac:x", "a:aac:96,a:aac:48",
                                  "o:opus:64", "a:aac:9999"])
def test_bad_ladders_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(LadderError):
        parse_ladder(text)


def test_target_duration_rounds_half_up() -> None:
    assert [target_duration_for(x) for x in (1.92, 0.32, 2.5, 2.49)] == [2, 1, 3, 2]
