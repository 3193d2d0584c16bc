"""Content types, CORS and lifetimes (LLHLS.md Appendix B)."""

from __future__ import annotations

from hls.http import (
    content_type_for_key,
    content_type_for_kind,
    default_lifetime,
    playlist_lifetime,
)


def test_content_types_by_name_and_by_kind_agree() -> None:
    pairs = [("live/r/b/a/live.m3u8", "playlist"), ("live/r/b/a/p1.0.m4s", "part"),
             ("live/r/b/a/s1.m4s", "segment"), ("live/r/b/a/init.mp4", "init"),
             ("live/r/master.m3u8", "master"), ("live/r/b/state.json", "state")]
    for key, kind in pairs:
        assert content_type_for_key(key) == content_type_for_kind(kind)
    assert content_type_for_key("live/r/b/a/live.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type_for_key("live/r/b/a/p1.0.m4s") == "audio/mp4"
    assert content_type_for_kind("other") == "application/octet-stream"


def test_lifetimes_follow_appendix_b() -> None:
    assert playlist_lifetime(2, blocking=True) == 12
    assert playlist_lifetime(2, blocking=False) == 1
    assert default_lifetime("blocking_playlist", 200, 2) == 12
    assert default_lifetime("blocking_playlist", 503, 2) == 8
    assert default_lifetime("playlist", 200, 2) == 1
    assert default_lifetime("playlist", 404, 2) == 2
    assert default_lifetime("part", 200, 2) == 120
    assert default_lifetime("part", 404, 2) == 2
