"""The containment rule (§6.2.5.2) is the same for a playlist model and for its text."""

from __future__ import annotations

from hls.reach import PlaylistPosition, parse_position, part_too_far
from packager.playlist import MediaPlaylist, Part, Segment, render_media


def _playlist(segments: int, open_parts: int) -> MediaPlaylist:
    parts = tuple(Part(0.24, f"p{{}}.{i}.m4s") for i in range(8))
    segs = tuple(Segment(msn, 1.92, f"s{msn}.m4s", 1000.0 + msn * 1.92, parts)
                 for msn in range(1, segments + 1))
    partial = tuple(Part(0.24, f"p{segments + 1}.{i}.m4s") for i in range(open_parts))
    return MediaPlaylist(2, 0.24, "init.mp4", segs, partial, next_msn=segments + 1,
                         partial_start=1000.0, preload_hint="p.m4s")


def test_model_and_rendered_text_agree_on_every_request() -> None:
    for segments, open_parts in ((3, 0), (3, 1), (3, 5), (1, 7)):
        pl = _playlist(segments, open_parts)
        text = parse_position(render_media(pl).encode())
        assert text is not None
        for msn in range(0, segments + 4):
            for part in (None, 0, 1, 4, 7, 8, 20):
                assert pl.has_part(msn, part) == text.contains(msn, part), (segments, open_parts,
                                                                            msn, part)
            assert pl.position().too_far(msn) == text.too_far(msn)


def test_a_part_past_the_last_of_a_segment_means_the_next_segment() -> None:
    pos = PlaylistPosition(last_msn=8, part_msn=8, part_index=7, ended=False,
                           target_duration=2, delta=False)
    assert pos.contains(8, 7) and not pos.contains(8, 8)
    opened = PlaylistPosition(8, 9, 0, False, 2, False)
    assert opened.contains(8, 8) and opened.contains(9, 0) and not opened.contains(9, 1)


def test_requests_far_ahead_are_too_far() -> None:
    pos = PlaylistPosition(8, 9, 1, False, 2, False)
    assert not pos.too_far(11) and pos.too_far(12) and not pos.too_far(12, slack=1)
    assert not PlaylistPosition(8, 9, 1, True, 2, False).too_far(1000)
    assert not part_too_far(18, 2, 0.24) and part_too_far(19, 2, 0.24)
