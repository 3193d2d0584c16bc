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
    RenditionReport,
    Variant,
    render_media,
    render_multivariant,
    skip_count,
    target_duration_for,
)
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


def test_ended_playlist_has_endlist_and_no_hint() -> None:
    b = PlaylistBuilder(_live(3, 0), window=15)
    text = render_media(b.end())
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "PRELOAD-HINT" not in text and "RENDITION-REPORT" not in text
    check_media_playlist(text)


def test_recording_is_an_event_playlist_of_every_segment() -> None:
    b = PlaylistBuilder(MediaPlaylist(2, 0.24, "init.mp4"), window=7)
    for msn in range(1, 21):
        b.add_part(Part(1.92, f"p{msn}.0.m4s"), T0 + msn, None)
        b.close_segment(f"s{msn}.m4s", None)
    assert len(b.playlist.segments) == 7, "the live window slides"
    b.end()
    text = render_media(b.recording())
    assert text == (GOLDEN / "recording.m3u8").read_text()
    assert text.count("#EXTINF") == 20 and "#EXT-X-PLAYLIST-TYPE:EVENT" in text


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


@pytest.mark.parametrize("text", ["", "a:mp3:96", "a:aac", "a:aac:x", "a:aac:96,a:aac:48",
                                  "o:opus:64", "a:aac:9999"])
def test_bad_ladders_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(LadderError):
        parse_ladder(text)


def test_target_duration_rounds_half_up() -> None:
    assert [target_duration_for(x) for x in (1.92, 0.32, 2.5, 2.49)] == [2, 1, 3, 2]
