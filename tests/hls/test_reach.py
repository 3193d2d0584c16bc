"""The containment rule (§6.2.5.2) is the same for a playlist model and for its text."""

from __future__ import annotations

import pytest

from hls.reach import (
    PlaylistPosition,
    max_parts_per_segment,
    parse_position,
    part_object_too_far,
    part_too_far,
    segments_since,
)
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


@pytest.mark.parametrize("minutes", [0.5, 2.5, 10, 60])
def test_a_copy_made_long_ago_still_admits_the_real_live_edge(minutes: float) -> None:
    # The packager's segments last 1.92 s under TARGETDURATION 2: a copy `minutes` old is
    # that many segments behind, and the next segment of the real edge must not be refused.
    pos = _playlist(3, 2).position()
    elapsed = minutes * 60
    moved = int(elapsed / 1.92) + 1
    slack = 1 + segments_since(elapsed, pos.target_duration)
    assert not pos.too_far(pos.part_msn + moved + 1, slack)
    # … while what lies well beyond any possible edge is still refused.
    assert pos.too_far(pos.part_msn + 3 + 4 * moved, slack)


def test_the_largest_part_index_a_playlist_can_hint() -> None:
    # Golden figures: TD 2 s, PART-TARGET 0.24 s (the packager's) → at most 13 parts a segment
    # (it cuts 9 AAC or 8 Opus parts); TD 1 s → 8; TD 6 s with 1 s parts → 8.
    assert max_parts_per_segment(2, 0.24) == 13
    assert max_parts_per_segment(1, 0.24) == 8
    assert max_parts_per_segment(6, 1.0) == 8
    # Every part the packager cuts, and the index one past a segment's last (part 0 of the
    # next segment), is a request; beyond that nothing is.
    assert not part_too_far(9, 2, 0.24) and not part_too_far(13, 2, 0.24)
    assert part_too_far(14, 2, 0.24)
    assert not part_object_too_far(8, 2, 0.24) and not part_object_too_far(12, 2, 0.24)
    assert part_object_too_far(13, 2, 0.24) and part_object_too_far(10**6, 2, 0.24)


@pytest.mark.parametrize("body", [
    b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:x\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-SKIP:SKIPPED-SEGMENTS=\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:nan\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:inf\n",
])
def test_a_playlist_with_a_broken_number_has_no_position(body: bytes) -> None:
    assert parse_position(body) is None
