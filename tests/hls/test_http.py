"""Content types, CORS and lifetimes (LLHLS.md Appendix B)."""

from __future__ import annotations

from hls.http import (
    asked_again,
    content_type_for_key,
    content_type_for_kind,
    default_lifetime,
    live_playlist_cache,
    playlist_lifetime,
    stored_playlist_cache,
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


def test_a_blocking_url_asked_again_never_outlives_a_part() -> None:
    # Waited for its part mid-segment: never asked again, 6 × TD.
    assert not asked_again(already_there=False, segment_open=True)
    assert live_playlist_cache(2, True, 0.24, again=False) == "public, max-age=12"
    # The part was there already, or the answer ends a segment (video.js asks it again):
    # one part target, rounded down to whole seconds.
    assert asked_again(already_there=True, segment_open=True)
    assert asked_again(already_there=False, segment_open=False)
    assert live_playlist_cache(2, True, 0.24, again=True) == "public, max-age=0"
    assert playlist_lifetime(6, True, 1.0, asked_again=True) == 1
    # Plain reloads are unaffected.
    assert live_playlist_cache(2, False, 0.24, again=True) == "public, max-age=1"


def test_only_an_ended_stored_playlist_is_long_lived() -> None:
    assert stored_playlist_cache(b"#EXTM3U\n#EXT-X-ENDLIST\n", "public, max-age=1") == (
        "public, max-age=86400")
    assert stored_playlist_cache(b"#EXTM3U\n", "public, max-age=0") == "public, max-age=0"
