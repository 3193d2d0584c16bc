"""Pure pieces of the edge: keys, paths, playlist reach, LRU, pins, breakers, listener estimate,
entries."""

from __future__ import annotations

import time

import pytest

from edge.breaker import BreakerTable, CircuitBreaker
from edge.cache import CoalescingCache
from edge.entry import Entry, build_fields, max_age
from edge.listeners import ListenerEstimate
from edge.lru import ByteLRU
from edge.metrics import EdgeMetrics
from edge.pinned import PinnedPlaylists
from edge.settings import EdgeSettings
from edge.targets import parse_target
from edge.upstream import Upstream, UpstreamResponse
from hls.directives import BadDirective
from hls.http import default_lifetime
from hls.reach import parse_position
from packager.playlist import render_media
from tests.hls.histories import live_history

PL = "/live/r/aac96/live.m3u8"

PLAYLIST = b"""#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-PART-INF:PART-TARGET=0.21334
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.65,CAN-SKIP-UNTIL=12
#EXT-X-MEDIA-SEQUENCE:7
#EXT-X-MAP:URI="init.mp4"
#EXTINF:1.92,
s7.m4s
#EXT-X-PART:DURATION=0.21333,URI="p8.0.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.21333,URI="p8.1.m4s",INDEPENDENT=YES
#EXTINF:1.92,
s8.m4s
#EXT-X-PART:DURATION=0.21333,URI="p9.0.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.21333,URI="p9.1.m4s",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p9.2.m4s"
"""


def test_cache_key_drops_foreign_parameters_and_sorts_directives() -> None:
    a = parse_target(PL + "?_HLS_skip=YES&x=1&_HLS_part=2&_HLS_msn=9&cb=7")
    b = parse_target(PL + "?_HLS_msn=9&_HLS_part=2&_HLS_skip=YES")
    assert a.key == b.key == PL + "?_HLS_msn=9&_HLS_part=2&_HLS_skip=YES"
    assert a.kind == "blocking_playlist" and a.room == "r"
    assert parse_target(PL + "?utm=1").key == PL
    part = "/live/r/aac96/e1-0a1b2c/p9.1.m4s"
    assert parse_target(part + "?_HLS_msn=3&r=1").key == part


@pytest.mark.parametrize("query", [
    "_HLS_part=1", "_HLS_msn=-1", "_HLS_msn=abc", "_HLS_msn=1&_HLS_part=x",
    "_HLS_msn=1&_HLS_msn=2", "_HLS_skip=maybe", "_HLS_msn=99999999999999999",
])
def test_malformed_directives_are_refused(query: str) -> None:
    with pytest.raises(BadDirective):
        parse_target(PL + "?" + query)


def test_kinds_follow_the_origin_names() -> None:
    kinds = {p: parse_target(p).kind for p in (
        "/live/r/master.m3u8", "/live/r/aac96/live.m3u8", "/live/r/aac96/e1-0a1b2c/init.mp4",
        "/live/r/aac96/e1-0a1b2c/s3.m4s", "/live/r/aac96/e1-0a1b2c/p3.1.m4s",
        "/live/r/b20261125T120000Z-0a1b2c/aac96/recording.m3u8")}
    assert list(kinds.values()) == ["master", "playlist", "init", "segment", "part", "recording"]


def test_playlist_position_knows_which_parts_exist() -> None:
    pos = parse_position(PLAYLIST)
    assert pos is not None
    assert (pos.last_msn, pos.part_msn, pos.part_index) == (8, 9, 1)
    assert pos.contains(9, 1) and pos.contains(8, 5) and pos.contains(8, None)
    assert not pos.contains(9, 2) and not pos.contains(9, None) and not pos.contains(10, 0)
    assert pos.too_far(12) and not pos.too_far(11)


def test_part_past_a_complete_segment_means_the_next_segment() -> None:
    closed = PLAYLIST.replace(b'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p9.2.m4s"\n', b"#EXTINF:1.92,\ns9.m4s\n")
    pos = parse_position(closed)
    assert pos is not None and (pos.last_msn, pos.part_msn, pos.part_index) == (9, 9, 1)
    assert pos.contains(9, 1) and not pos.contains(9, 2) and not pos.contains(10, 0)


def test_delta_playlist_counts_skipped_segments() -> None:
    delta = PLAYLIST.replace(b"#EXTINF:1.92,\ns7.m4s\n", b"#EXT-X-SKIP:SKIPPED-SEGMENTS=1\n")
    pos = parse_position(delta)
    assert pos is not None and pos.delta and pos.last_msn == 8


def test_master_playlist_has_no_position() -> None:
    assert parse_position(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na/live.m3u8\n") is None


def _entry(n: int) -> Entry:
    return Entry(200, "part", b"x" * n, build_fields("part", None, b"max-age=60", []), 0.0, 60)


def test_lru_evicts_oldest_by_bytes() -> None:
    lru = ByteLRU(10_000)
    for i in range(50):
        lru.put(str(i), _entry(500))
        assert lru.bytes <= 10_000
    assert lru.get("49") is not None and lru.peek("0") is None and lru.evictions > 0


def test_entry_carries_age_length_and_cors() -> None:
    e = _entry(4)
    raw = e.response(now=5.7, gz=False, head_only=False, close=False)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nxxxx")
    for line in (b"Content-Length: 4", b"Age: 5", b"Access-Control-Expose-Headers: Age"):
        assert line in raw
    assert e.response(now=5.9, gz=False, head_only=False, close=False) is raw  # memoised


def test_lifetimes_follow_appendix_b() -> None:
    assert max_age(b"public, max-age=12") == 12 and max_age(b"no-store") == 0
    assert max_age(b"max-age=60, s-maxage=5") == 5 and max_age(None) is None
    assert default_lifetime("blocking_playlist", 200, 2) == 12
    assert default_lifetime("playlist", 200, 2) == 1 and default_lifetime("playlist", 404, 2) == 2
    assert default_lifetime("part", 200, 2) >= 12 and default_lifetime("part", 404, 2) == 2


def test_breaker_opens_backs_off_and_closes() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=2, backoff_min=1.0, backoff_max=4.0, clock=lambda: now[0])
    b.failure()
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 1.3
    assert b.allow() and b.state == "half_open" and not b.allow()  # one probe only
    b.failure()
    assert b.state == "open"
    now[0] = 2.9
    assert not b.allow()  # backoff doubled
    now[0] = 4.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_listener_estimate_counts_distinct_clients_in_window() -> None:
    est = ListenerEstimate(window=30.0)
    for i in range(3000):
        for _ in range(3):
            est.seen("r", hash(("10.0.0.%d" % (i % 250), "ua%d" % i)), now=100.0)
    n = est.estimate("r", now=101.0)
    assert 2850 <= n <= 3150
    assert est.estimate("r", now=140.0) == 0
    assert est.estimate("other", now=101.0) == 0


def test_far_future_check_measures_against_the_newest_delta_too() -> None:
    from edge.pinned import PinnedPlaylist

    pinned = PinnedPlaylist()
    old = parse_position(PLAYLIST)
    assert old is not None
    pinned.update(_entry(1), old, 100.0)
    # Players that switch to delta updates keep only the delta copy fresh.
    newer = PLAYLIST.replace(b"MEDIA-SEQUENCE:7", b"MEDIA-SEQUENCE:12").replace(
        b"#EXTINF:1.92,\ns7.m4s\n", b"#EXT-X-SKIP:SKIPPED-SEGMENTS=1\n")
    fresh = parse_position(newer)
    assert fresh is not None and fresh.delta
    pinned.update(_entry(1), fresh, 130.0)
    assert pinned.reach == fresh and pinned.reach_born == 130.0
    assert not pinned.reach.too_far(16)
    assert pinned.reach.too_far(40)


def test_breakers_count_failures_per_room() -> None:
    now = [0.0]
    table = BreakerTable(failures=2, backoff_min=1.0, backoff_max=4.0, max_rooms=3,
                         clock=lambda: now[0])
    table.failure("stalled")
    table.failure("stalled")
    assert table.state("stalled") == "open" and not table.allow("stalled")
    assert table.allow("healthy") and table.state("healthy") == "closed"
    assert table.open_count() == 1 and table.trips == 1
    table.success("healthy")  # a healthy room leaves nothing behind
    assert len(table) == 1


def test_breaker_table_is_bounded_and_forgets_the_oldest_room() -> None:
    table = BreakerTable(failures=1, max_rooms=3)
    for room in ("a", "b", "c", "d"):
        table.failure(room)
    assert len(table) == 3 and table.forgotten == 1
    assert table.allow("a")  # forgotten: tried again
    assert not table.allow("d")


def test_inconclusive_probe_gives_its_turn_to_the_next_request() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=1, backoff_min=1.0, clock=lambda: now[0])
    b.failure()
    now[0] = 2.0
    assert b.allow() and b.state == "half_open"
    b.inconclusive()  # the probe never reached the upstream (the edge's pool was full)
    assert b.allow() and b.state == "half_open"


def test_reserved_bytes_evict_lru_entries() -> None:
    lru = ByteLRU(10_000)
    for i in range(8):
        lru.put(str(i), _entry(500))
    lru.reserve(6_000)
    assert lru.total <= 10_000 and lru.peek("0") is None and lru.peek("7") is not None


def _playlist_entry(body: bytes) -> Entry:
    return Entry(200, "playlist", body, build_fields("playlist", None, b"max-age=1", []), 0.0, 1)


def test_pinned_playlists_count_against_the_bound() -> None:
    lru = ByteLRU(64 * 1024)
    pins = PinnedPlaylists(lru, 8 * 1024)
    for i in range(20):
        pins.update(f"/live/r{i}/aac96/live.m3u8", _playlist_entry(PLAYLIST),
                    parse_position(PLAYLIST), float(i))
        assert pins.bytes <= 8 * 1024 and lru.reserved == pins.bytes
    assert pins.dropped > 0 and pins.get("/live/r19/aac96/live.m3u8") is not None
    assert pins.get("/live/r0/aac96/live.m3u8") is None  # least recently refreshed went first


def test_playlist_position_carries_part_target_and_epoch() -> None:
    body = PLAYLIST.replace(b'URI="init.mp4"', b'URI="e4-0a1b2c/init.mp4"')
    with_epoch, without = parse_position(body), parse_position(PLAYLIST)
    assert with_epoch is not None and without is not None
    assert (with_epoch.part_target, with_epoch.epoch) == (0.21334, "e4-0a1b2c")
    assert (without.part_target, without.epoch) == (0.21334, None)


@pytest.mark.parametrize("path", [
    "/live/r/./master.m3u8", "/live/r//master.m3u8", "/live/r/aac96/../master.m3u8",
    "/live/r/%61ac96/live.m3u8", "/live/r/aac96/live.m3u8/.",
])
def test_paths_that_are_not_plain_are_refused(path: str) -> None:
    with pytest.raises(BadDirective):
        parse_target(path)


def test_only_public_objects_are_asked_upstream() -> None:
    assert not parse_target("/live/r/room.json").public
    assert not parse_target("/live/r/state.json").public
    assert not parse_target("/live/r/aac96/e1-0a1b2c/i3.m3u8").public
    assert not parse_target("/live/r/aac96/x.m4s").public
    assert not parse_target("/live/R/master.m3u8").public
    part = parse_target("/live/r/aac96/e1-0a1b2c/p9.1.m4s?x=1")
    assert part.public and (part.epoch, part.media_msn, part.media_part) == ("e1-0a1b2c", 9, 1)
    assert part.live_path == "/live/r/aac96/live.m3u8"


def test_a_copy_behind_what_players_were_given_is_never_the_stale_answer() -> None:
    from edge.pinned import PinnedPlaylist

    pinned = PinnedPlaylist()
    old, joined = parse_position(PLAYLIST), _entry(1)
    assert old is not None
    pinned.update(joined, old, 100.0)
    plain, skip = parse_target(PL), parse_target(PL + "?_HLS_skip=YES")
    assert pinned.current(plain) is joined
    # Listeners moved on to delta updates: the only full copy is the one from the join.
    newer = PLAYLIST.replace(b"MEDIA-SEQUENCE:7", b"MEDIA-SEQUENCE:12").replace(
        b"#EXTINF:1.92,\ns7.m4s\n", b"#EXT-X-SKIP:SKIPPED-SEGMENTS=1\n")
    delta = _entry(2)
    pinned.update(delta, parse_position(newer), 130.0)
    assert pinned.current(skip) is delta
    assert pinned.current(plain) is None  # → 503, never the old copy


async def test_a_delta_update_is_rebuilt_into_the_plain_answer_and_bad_bytes_are_left_alone(
) -> None:
    cache = CoalescingCache(EdgeSettings(), Upstream("http://127.0.0.1:9", 1.0, 1.0, 1),
                            EdgeMetrics())
    states = live_history(25, frozenset(), 15)
    headers = {"content-type": "application/vnd.apple.mpegurl", "cache-control": "max-age=1"}
    plain = parse_target(PL)
    cache._store(plain, UpstreamResponse(200, headers, render_media(states[-3]).encode()))
    msn, part = states[-1].last_position()
    asked = parse_target(f"{PL}?_HLS_msn={msn}&_HLS_part={part}&_HLS_skip=YES")
    broken = render_media(states[-2], skip=True).encode().replace(b"#EXTM3U", b"#EXTM3U\xff")
    cache._store(asked, UpstreamResponse(200, headers, broken))  # unreadable: no rebuild
    assert cache.metrics.playlists_rebuilt == 0
    cache._store(asked, UpstreamResponse(200, headers, render_media(states[-1], skip=True)
                                         .encode()))
    assert cache.metrics.playlists_rebuilt == 1
    answer = cache.lookup(plain, time.monotonic())
    assert answer is not None and answer.body == render_media(states[-1]).encode()
    await cache.upstream.aclose()
