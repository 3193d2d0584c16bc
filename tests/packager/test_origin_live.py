"""A live origin with a generated broadcast, checked over HTTP against the LL-HLS rules."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hls.reach import max_parts_per_segment
from packager.boxes import read_fragment
from packager.ladder import PART_TARGET_SECONDS
from tests.support.llhls import check_media_playlist, check_multivariant
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("origin")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["origin", "--demo", "live", "--port", str(port), "--data", str(tmp / "data")],
                 tmp / "origin.log", f"{base}/healthz"):
        # Wait for the first part of every rendition.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = httpx.get(f"{base}/live/live/master.m3u8")
            if r.status_code == 200:
                break
            time.sleep(0.1)
        yield base


def _variants(base: str) -> list[str]:
    text = httpx.get(f"{base}/live/live/master.m3u8").text
    return [f"{base}/live/live/{u}" for u in check_multivariant(text)]


def test_live_playlists_follow_the_llhls_rules_for_twenty_seconds(origin: str) -> None:
    urls = _variants(origin)
    assert len(urls) == 3
    first: dict[str, int] = {}
    targets: set[str] = set()
    end = time.monotonic() + 20
    checks = 0
    while time.monotonic() < end:
        positions = []
        for url in urls:
            text = httpx.get(url).text
            targets.add(re.search(r"#EXT-X-TARGETDURATION:(\d+)", text)[1])  # type: ignore[index]
            pos = check_media_playlist(text)
            positions.append(pos.last_msn)
            first.setdefault(url, pos.last_msn)
            delta = httpx.get(url, params={"_HLS_skip": "YES"}).text
            check_media_playlist(delta)
            checks += 2
        assert max(positions) - min(positions) <= 1, "renditions advance in step"
        time.sleep(0.4)
    assert targets == {"2"}, "the target duration never changes"
    for url in urls:
        last = check_media_playlist(httpx.get(url).text).last_msn
        assert last - first[url] >= 8, "about ten 1.92 s segments in 20 s"
    assert checks > 60


def test_window_holds_at_least_three_target_durations_and_delta_skips(origin: str) -> None:
    url = _variants(origin)[0]
    # A young room has less to show: nothing may be skipped before it is older than the skip
    # boundary (six target durations) plus a segment. Wait until it is.
    # The two requests are a moment apart: a pair between which a segment was cut (a busy
    # machine) is asked again.
    seg = r"^\S*s\d+\.m4s$"
    deadline = time.monotonic() + 30
    while True:
        full = httpx.get(url).text
        delta = httpx.get(url, params={"_HLS_skip": "YES"}).text
        m = re.search(r"#EXT-X-SKIP:SKIPPED-SEGMENTS=(\d+)", delta)
        newest = [re.findall(seg, text, re.MULTILINE)[-1:] for text in (full, delta)]
        same = newest[0] == newest[1]
        if (m and same) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", full)]
    assert sum(durations) >= 3 * 2
    assert m and int(m[1]) >= 1
    assert delta.count("#EXTINF") == full.count("#EXTINF") - int(m[1])
    # The segments left after the skip are the newest ones of the full playlist.
    assert re.findall(seg, delta, re.MULTILINE) == re.findall(seg, full, re.MULTILINE)[int(m[1]):]


def test_blocking_request_returns_once_the_next_part_exists_and_contains_it(origin: str) -> None:
    url = _variants(origin)[0]
    before = httpx.get(url).text
    pos = check_media_playlist(before)
    assert pos.hint is not None
    msn, part = map(int, re.fullmatch(r"[^/]+/p(\d+)\.(\d+)\.m4s", pos.hint).groups())  # type: ignore[union-attr]
    # The hinted part is the one that does not exist yet.
    assert f'#EXT-X-PART:DURATION=0.21333,URI="{pos.hint}"' not in before
    # One part past the hint, so that the request surely waits (a busy machine may take a
    # part's time between the two requests, and a part already there is answered short).
    r = httpx.get(url, params={"_HLS_msn": msn, "_HLS_part": part + 1}, timeout=10)
    assert r.status_code == 200
    assert '#EXT-X-PART:DURATION=' in r.text and f'URI="{pos.hint}"' in r.text
    after = check_media_playlist(r.text)
    assert (after.last_msn, after.last_part) >= (msn, part) or after.last_msn >= msn
    # It waited, so its URL is not asked again: long-lived, unless the answer ends on a
    # segment boundary (video.js asks for that part once more there).
    boundary = _ends_on_boundary(r.text)
    assert r.headers["cache-control"] == ("public, max-age=0" if boundary
                                          else "public, max-age=12")


def _ends_on_boundary(text: str) -> bool:
    """Whether the playlist lists no part after its last complete segment."""
    tail = text.rsplit("#EXTINF:", 1)[-1]
    return "#EXT-X-PART:" not in tail


def _wait_for_hint(url: str, last: bool) -> tuple[int, int]:
    """(msn, part) of the preload hint once it names a segment's last part (`last`) or any
    other part; AAC segments have 9 parts."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hint = check_media_playlist(httpx.get(url).text).hint
        assert hint is not None
        msn, part = map(int, re.fullmatch(r"[^/]+/p(\d+)\.(\d+)\.m4s", hint).groups())  # type: ignore[union-attr]
        if (part == 8) == last:
            return msn, part
        time.sleep(0.05)
    raise TimeoutError("the hint never reached the wanted part")


def test_a_satisfied_blocking_request_gets_the_newest_playlist_briefly(origin: str) -> None:
    url = _variants(origin)[0]
    pos = check_media_playlist(httpx.get(url).text)
    r = httpx.get(url, params={"_HLS_msn": pos.last_msn, "_HLS_part": 0}, timeout=2)
    assert r.status_code == 200
    # Its part existed already: a client may ask this URL again, so the answer must not
    # outlive the live edge (a part target is under a second: zero whole seconds).
    assert r.headers["cache-control"] == "public, max-age=0"
    now = check_media_playlist(r.text)
    assert (now.last_msn, now.last_part) >= (pos.last_msn, pos.last_part)


def test_a_wait_that_ends_a_segment_is_short_lived(origin: str) -> None:
    url = _variants(origin)[0]
    msn, part = _wait_for_hint(url, last=True)
    r = httpx.get(url, params={"_HLS_msn": msn, "_HLS_part": part}, timeout=10)
    assert r.status_code == 200 and f"/s{msn}.m4s\n" in r.text
    if _ends_on_boundary(r.text):
        assert r.headers["cache-control"] == "public, max-age=0"
    # A wait that ends inside a segment is a URL nobody asks again: 6 × TD. On a loaded
    # machine the hinted part (0.21 s) may exist by the time the request arrives; that
    # answer is a satisfied one (max-age=0), so the test asks again for a newer hint.
    for _ in range(5):
        msn, part = _wait_for_hint(url, last=False)
        r = httpx.get(url, params={"_HLS_msn": msn, "_HLS_part": part}, timeout=10)
        if r.headers["cache-control"] != "public, max-age=0":
            break
    assert r.headers["cache-control"] == "public, max-age=12", r.text


def test_part_indices_no_segment_can_hold_are_refused_at_once(origin: str) -> None:
    url = _variants(origin)[0]
    pos = check_media_playlist(httpx.get(url).text)
    assert pos.hint is not None
    folder = url.rsplit("/", 1)[0] + "/" + pos.hint.split("/")[0]
    # TARGETDURATION 2, PART-TARGET 0.21334: at most 14 parts (hls.reach).
    most = max_parts_per_segment(2, PART_TARGET_SECONDS)
    assert most == 14
    r = httpx.get(f"{folder}/p{pos.last_msn + 1}.{most}.m4s", timeout=2)
    assert r.status_code == 404 and r.headers["cache-control"] == "public, max-age=2"
    r = httpx.get(url, params={"_HLS_msn": pos.last_msn + 1, "_HLS_part": most + 1}, timeout=2)
    assert r.status_code == 400
    r = httpx.get(url, params={"_HLS_msn": pos.last_msn + 1, "_HLS_part": most}, timeout=10)
    assert r.status_code == 200  # one past the last part: part 0 of the next segment
    # A complete segment has 9 AAC parts: a tenth is refused without waiting or retrying.
    r = httpx.get(f"{folder}/p{pos.last_msn}.10.m4s", timeout=2)
    assert r.status_code == 404


def test_blocking_request_for_a_whole_segment(origin: str) -> None:
    url = _variants(origin)[1]
    pos = check_media_playlist(httpx.get(url).text)
    r = httpx.get(url, params={"_HLS_msn": pos.last_msn + 1}, timeout=10)
    assert r.status_code == 200
    assert f"/s{pos.last_msn + 1}.m4s\n" in r.text


def test_far_future_msn_is_refused_at_once(origin: str) -> None:
    url = _variants(origin)[0]
    pos = check_media_playlist(httpx.get(url).text)
    r = httpx.get(url, params={"_HLS_msn": pos.last_msn + 50}, timeout=2)
    assert r.status_code == 400


@pytest.mark.parametrize("query", [
    {"_HLS_part": "1"},
    {"_HLS_msn": "-1"},
    {"_HLS_msn": "abc"},
    {"_HLS_msn": "1", "_HLS_part": "1.5"},
    {"_HLS_msn": "9" * 40},
    {"_HLS_skip": "NO"},
])
def test_malformed_directives_are_400(origin: str, query: dict[str, str]) -> None:
    r = httpx.get(_variants(origin)[0], params=query, timeout=2)
    assert r.status_code == 400


def test_old_msn_is_answered_at_once(origin: str) -> None:
    r = httpx.get(_variants(origin)[0], params={"_HLS_msn": "1", "_HLS_part": "0"}, timeout=2)
    assert r.status_code == 200
    check_media_playlist(r.text)


def test_unknown_parameters_are_ignored(origin: str) -> None:
    r = httpx.get(_variants(origin)[0], params={"x": "y", "_HLS_foo": "1"})
    assert r.status_code == 200


def test_hinted_part_requested_early_arrives_whole(origin: str) -> None:
    url = _variants(origin)[2]  # Opus
    pos = check_media_playlist(httpx.get(url).text)
    part_url = url.rsplit("/", 1)[0] + "/" + pos.hint  # type: ignore[operator]
    assert httpx.head(url).status_code == 200
    r = httpx.get(part_url, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/mp4"
    assert int(r.headers["content-length"]) == len(r.content)
    info = read_fragment(r.content)
    assert sum(info.sizes) == info.mdat_size and len(info.durations) >= 1
    assert httpx.get(part_url).content == r.content, "a part never changes"


def test_objects_carry_cache_and_cors_headers(origin: str) -> None:
    url = _variants(origin)[0]
    r = httpx.get(url)
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "public, max-age=1"
    assert r.headers["access-control-allow-origin"] == "*"
    assert "Age" in r.headers["access-control-expose-headers"]
    init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', r.text)[1]  # type: ignore[index]
    init = httpx.get(url.rsplit("/", 1)[0] + "/" + init_uri)
    assert init.status_code == 200 and "immutable" in init.headers["cache-control"]
    assert httpx.get(f"{origin}/live/nope/master.m3u8").status_code == 404
    assert httpx.get(f"{origin}/live/BAD..ROOM/master.m3u8").status_code == 404


@pytest.mark.parametrize("index,codec", [(0, "aac"), (2, "opus")])
def test_ffmpeg_plays_the_live_rendition(origin: str, tmp_path: Path, index: int, codec: str) -> None:
    out = tmp_path / f"out{index}.wav"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", f"{origin}/live/live/master.m3u8",
         "-map", f"0:a:{index}", "-t", "6", "-y", str(out)],
        check=True, timeout=60,
    )
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name",
         "-of", "default=nw=1", f"{origin}/live/live/master.m3u8"],
        capture_output=True, text=True, timeout=30,
    )
    assert codec in probe.stdout
    dur = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True)
    assert abs(float(dur.stdout) - 6.0) < 0.05
