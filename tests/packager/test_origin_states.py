"""Origin behaviour at the edges of a broadcast's life: parts that never come, an ended
broadcast, and an origin that reads live state from the store written by another process."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from hls.http import NO_STORE, SHORT
from packager.cmaf import LadderEncoder
from packager.origin import ELSEWHERE, HubLive, build_app
from packager.pipeline import Packager
from packager.recording import RecordingComposer
from packager.settings import PackagerSettings
from serving.http import http_server, serve_http
from tests.support.llhls import check_media_playlist
from tests.support.audio import feed_as_encoded, program_tone
from tests.support.procs import free_port, running


@asynccontextmanager
async def _packager_origin(tmp_path: Path, routed: bool = False
                           ) -> AsyncIterator[tuple[Packager, str]]:
    packager = Packager(PackagerSettings(data_dir=tmp_path))
    port = free_port()
    server = http_server(build_app(packager.store, HubLive(packager.hub), routed=routed),
                         "127.0.0.1", port)
    started = asyncio.Event()
    task = asyncio.create_task(serve_http(server, started))
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield packager, f"http://127.0.0.1:{port}"
    finally:
        await packager.close()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


@pytest.fixture
async def packager_origin(tmp_path: Path) -> AsyncIterator[tuple[Packager, str]]:
    async with _packager_origin(tmp_path) as made:
        yield made


async def test_part_that_never_comes_is_503_after_three_target_durations(
    packager_origin: tuple[Packager, str]
) -> None:
    packager, base = packager_origin
    b = packager.start_broadcast("stalled")
    url = f"{base}/live/stalled/aac96/live.m3u8"
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        r = await client.get(url, params={"_HLS_msn": 1, "_HLS_part": 0}, timeout=20)
        waited = time.monotonic() - started
        assert r.status_code == 503
        assert waited >= 3 * 2 - 0.1, "held for three target durations before giving up"
        hinted = await client.get(url.replace("live.m3u8", f"{b.epoch.id}/p1.0.m4s"), timeout=20)
        assert hinted.status_code == 503


async def test_held_requests_are_released_by_the_part_they_wait_for(
    packager_origin: tuple[Packager, str]
) -> None:
    packager, base = packager_origin
    b = packager.start_broadcast("held")
    url = f"{base}/live/held/opus64/live.m3u8"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=300)) as client:
        waiters = [asyncio.create_task(client.get(url, params={"_HLS_msn": 1, "_HLS_part": 0},
                                                   timeout=20)) for _ in range(200)]
        part = asyncio.create_task(client.get(url.replace("live.m3u8", f"{b.epoch.id}/p1.0.m4s"),
                                              timeout=20))
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in waiters), "nothing is answered before the part exists"
        b.feed(program_tone(0.3))  # enough for the first 240 ms Opus part
        responses = await asyncio.gather(*waiters)
        assert {r.status_code for r in responses} == {200}
        assert all(f'URI="{b.epoch.id}/p1.0.m4s"' in r.text for r in responses)
        assert (await part).status_code == 200


@pytest.mark.parametrize(("routed", "status"), [(False, 503), (True, ELSEWHERE)])
async def test_requests_held_for_an_epoch_that_stops_are_answered_at_once(
        tmp_path: Path, routed: bool, status: int) -> None:
    """A node handing its room over (or shutting down) lets go of what it holds when the epoch
    stops, not when its server gives up on it: behind the tier with ELSEWHERE, so that the
    tier asks the next owner; alone with a 503 that players retry."""
    async with _packager_origin(tmp_path, routed) as (packager, base), httpx.AsyncClient() as c:
        b = packager.start_broadcast("moving")
        b.feed(program_tone(0.6))
        url = f"{base}/live/moving/aac96/live.m3u8"
        first = await c.get(url, params={"_HLS_msn": 1, "_HLS_part": 0}, timeout=10)
        assert first.status_code == 200
        held = asyncio.create_task(c.get(url, params={"_HLS_msn": 1, "_HLS_part": 5},
                                          timeout=20))
        hinted = asyncio.create_task(c.get(url.replace("live.m3u8", f"{b.epoch.id}/p1.5.m4s"),
                                           timeout=20))
        await asyncio.sleep(0.3)
        assert not held.done() and not hinted.done(), "held while the epoch is on air"
        stopped_at = time.monotonic()
        await b.suspend()
        r, part = await asyncio.gather(held, hinted)
        assert time.monotonic() - stopped_at < 2.0, "let go when the epoch stopped, not later"
        assert r.status_code == status, r.text
        assert r.headers["cache-control"] == (NO_STORE if routed else SHORT)
        assert part.status_code == 503 and "stopped" in part.text
        # What the stopped epoch has is still served from it.
        again = await c.get(url, params={"_HLS_msn": 1, "_HLS_part": 0}, timeout=10)
        assert again.status_code == 200


async def test_a_starting_rooms_master_is_held_until_announced_not_refused(
    packager_origin: tuple[Packager, str]
) -> None:
    """Listeners waiting for a room ask for its master the moment it goes on air, before it
    has the whole segments players that ignore parts need: they wait for it, as a blocking
    request waits for its part, where a 404 would make most players give up."""
    packager, base = packager_origin
    b = packager.start_broadcast("starting")
    url = f"{base}/live/starting/master.m3u8"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        waiters = [asyncio.create_task(client.get(url, timeout=20)) for _ in range(50)]
        await feed_as_encoded(b, program_tone(0.5), 2.5)  # one whole segment, not two
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters), "held while the room is not announced"
        await feed_as_encoded(b, program_tone(0.5), 2.5)  # the second whole segment
        responses = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert {r.status_code for r in responses} == {200}
    assert all(r.text.count("#EXT-X-STREAM-INF") == 3 for r in responses)


async def test_the_master_of_a_room_that_never_gets_going_is_404_after_the_hold(
    packager_origin: tuple[Packager, str]
) -> None:
    packager, base = packager_origin
    packager.start_broadcast("silent")
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        r = await client.get(f"{base}/live/silent/master.m3u8", timeout=20)
        waited = time.monotonic() - started
    assert r.status_code == 404
    assert waited >= 3 * 2 - 0.1, "held for three target durations"


async def test_a_request_held_when_the_broadcast_ends_gets_the_last_playlist_at_once(
    packager_origin: tuple[Packager, str]
) -> None:
    packager, base = packager_origin
    b = packager.start_broadcast("ending")
    b.feed(program_tone(0.6))
    url = f"{base}/live/ending/aac96/live.m3u8"
    async with httpx.AsyncClient() as client:
        held = asyncio.create_task(client.get(url, params={"_HLS_msn": 3, "_HLS_part": 0},
                                              timeout=20))
        await asyncio.sleep(0.3)
        assert not held.done()
        await b.close()
        r = await asyncio.wait_for(held, 2.0)
        assert r.status_code == 200 and r.text.endswith("#EXT-X-ENDLIST\n")


async def test_a_folder_store_drops_parts_once_their_segment_has_left_the_live_window(
        tmp_path: Path) -> None:
    """The local store has no lifecycle rule: parts (the same audio as their segment) go once
    no playlist can list them and the segment is stored; segments, the recording and the
    parts still in the window stay."""
    window = 7
    packager = Packager(PackagerSettings(data_dir=tmp_path, live_window_segments=window))
    removed = {"outcome": "removed"}
    before = REGISTRY.get_sample_value("townsquare_packager_parts_expired_total", removed) or 0
    try:
        b = packager.start_broadcast("long")
        playlist = b.live.renditions["aac96"]

        async def cut(segments: int) -> None:
            """Wait for the encoders (threads, slower on a busy machine) to cut that many."""
            deadline = time.monotonic() + 60
            while playlist.playlist.next_msn <= segments:
                assert time.monotonic() < deadline, playlist.playlist.next_msn
                await asyncio.sleep(0.05)

        for _ in range(60):  # 30 s: 15 segments of 1.92 s
            b.feed(program_tone(0.5))
            await asyncio.sleep(0.05)  # the writer stores as it goes, as on air
        await cut(15)
        await packager.flush(10)
        b.feed(program_tone(2.0))  # a segment more: expiry looks again once the rest is stored
        await cut(16)
        await packager.flush(10)
        folder = tmp_path / "live" / "long" / "aac96" / b.epoch.id

        def parted() -> list[int]:
            return sorted({int(f.name[1:].split(".")[0]) for f in folder.glob("p*.m4s")})

        segments = sorted(int(f.name[1:-4]) for f in folder.glob("s*.m4s"))
        newest = segments[-1]
        deadline = time.monotonic() + 10  # the expiry runs in the background
        while parted()[0] <= newest - window - 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert segments == list(range(1, newest + 1)), "every segment stays"
        assert newest >= 15
        left = parted()
        assert left[0] > newest - window - 3, f"parts of old segments stay: {left}"
        # In every rendition, the segments its window holds keep their parts, and every part
        # its playlist lists is there. (Renditions are cut out of step by a block or more;
        # each keeps its own window's parts.)
        for name in b.live.renditions:
            own = folder.parent.parent / name / b.epoch.id
            window_msns = [seg.msn for seg in b.live.renditions[name].playlist.segments]
            kept = {int(f.name[1:].split(".")[0]) for f in own.glob("p*.m4s")}
            assert set(window_msns) <= kept, f"{name}: window {window_msns}, parts of {kept}"
            listed = re.findall(r'^#EXT-X-PART:.*URI="([^"]+)"', b.live.render(name, False)
                                .decode(), re.MULTILINE)
            assert listed, name
            gone = [u for u in listed if not (folder.parent.parent / name / u).exists()]
            assert not gone, f"{name}: listed parts not in the store: {gone}"
        after = REGISTRY.get_sample_value("townsquare_packager_parts_expired_total", removed)
        # Every rendition's parts of the segments before the first with parts left.
        assert after is not None and after - before >= 3 * 8 * (left[0] - 1)
        text = await RecordingComposer(packager.store).compose("long", b.broadcast_id, "aac96")
        assert text is not None and text.count(b"#EXTINF") == newest, "the recording is whole"
    finally:
        await packager.close()



async def test_a_rendition_cut_behind_the_others_keeps_the_parts_of_its_window(
        tmp_path: Path) -> None:
    """The renditions' segments are cut out of step (a block or more on a busy machine):
    here Opus runs twelve segments ahead, then the AAC renditions catch up. Each keeps the
    parts of the segments its own window holds."""
    window = 7
    settings = PackagerSettings(data_dir=tmp_path, live_window_segments=window)
    packager = Packager(settings)
    try:
        b = packager.start_broadcast("apart")
        # The events the broadcast's encoder lane would hand it, made by the same encoders.
        encoder = LadderEncoder(b.renditions, settings.segment_units)
        events = encoder.push(program_tone(12 * 1.92 + 0.5))
        ahead = [ev for ev in events if ev[0] == "opus64"]
        behind = [ev for ev in events if ev[0] != "opus64"]
        b._on_events(ahead)
        await packager.flush(10)
        b._on_events(behind)
        await packager.flush(10)
        b._expire_parts()  # as after the next part: everything is stored now
        base = tmp_path / "live" / "apart"

        def kept(name: str) -> set[int]:
            return {int(f.name[1:].split(".")[0])
                    for f in (base / name / b.epoch.id).glob("p*.m4s")}

        def oldest(name: str) -> int:
            return b.live.renditions[name].playlist.segments[0].msn

        deadline = time.monotonic() + 10  # parts are removed in the background
        while any(min(kept(n)) < oldest(n) for n in b.live.renditions) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        windows = {name: [seg.msn for seg in lr.playlist.segments]
                   for name, lr in b.live.renditions.items()}
        for name, msns in windows.items():
            assert len(msns) == window and msns[-1] >= 12, msns
            assert set(msns) <= kept(name), f"{name}: window {msns}, parts of {sorted(kept(name))}"
        for name, msns in windows.items():
            assert min(kept(name)) == msns[0], f"{name}: older parts stay: {sorted(kept(name))}"
    finally:
        await packager.close()


async def test_ended_broadcast_ignores_directives_and_keeps_its_recording(
    packager_origin: tuple[Packager, str]
) -> None:
    packager, base = packager_origin
    b = packager.start_broadcast("ended")
    for _ in range(20):
        b.feed(program_tone(0.25))
    await b.close()
    url = f"{base}/live/ended/aac96/live.m3u8"
    async with httpx.AsyncClient() as client:
        r = await client.get(url, params={"_HLS_msn": 999, "_HLS_part": 3}, timeout=5)
        assert r.status_code == 200 and r.text.endswith("#EXT-X-ENDLIST\n")
        check_media_playlist(r.text)
        rec = await client.get(f"{base}/live/ended/{b.broadcast_id}/aac96/recording.m3u8")
        assert rec.status_code == 200 and "#EXT-X-ENDLIST" in rec.text
        assert rec.text.count("#EXTINF") == 3  # 5 s → 1.92 + 1.92 + the rest


@pytest.mark.slow
def test_standalone_origin_serves_a_broadcast_written_by_another_process(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["ingest", "--room", "split", "--source", "tone", "--data", data],
                 tmp_path / "ingest.log", None):
        with running(["origin", "--port", str(port), "--data", data], tmp_path / "origin.log",
                     f"{base}/healthz"):
            deadline = time.monotonic() + 20
            while httpx.get(f"{base}/live/split/master.m3u8").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            uri = re.search(r"^(\S*aac96/live\.m3u8)$", httpx.get(f"{base}/live/split/master.m3u8").text, re.M)[1]  # type: ignore[index]
            url = f"{base}/live/split/{uri}"
            while "#EXT-X-PART" not in (text := httpx.get(url).text):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            hint = check_media_playlist(text).hint
            assert hint is not None
            found = re.fullmatch(r"[^/]+/p(\d+)\.(\d+)\.m4s", hint)
            assert found is not None
            msn, part = map(int, found.groups())
            r = httpx.get(url, params={"_HLS_msn": msn, "_HLS_part": part}, timeout=10)
            assert r.status_code == 200 and f'URI="{hint}"' in r.text
            part_r = httpx.get(url.replace("live.m3u8", hint), timeout=10)
            assert part_r.status_code == 200 and part_r.content[4:8] == b"moof"


async def test_state_file_is_written_for_followers_only(tmp_path: Path) -> None:
    """A packager on its own writes `state.json` for an origin elsewhere to follow; one with
    an origin in its process does not, unless told to; `publish_state` decides either way."""
    cases = {
        "alone": PackagerSettings(data_dir=tmp_path / "alone"),
        "beside": PackagerSettings(data_dir=tmp_path / "beside").beside_origin(),
        "asked": PackagerSettings(data_dir=tmp_path / "asked", publish_state=True).beside_origin(),
        "off": PackagerSettings(data_dir=tmp_path / "off", publish_state=False),
    }
    for settings in cases.values():
        p = Packager(settings)
        b = p.start_broadcast("state")
        b.feed(program_tone(2.5))
        await b.close()
    written = {name: len(list((tmp_path / name).rglob("state.json"))) for name in cases}
    assert written == {"alone": 1, "beside": 0, "asked": 1, "off": 0}
    assert all(list((tmp_path / name).rglob("recording.m3u8")) for name in cases)


def test_publish_state_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PackagerSettings().publish_state is None
    monkeypatch.setenv("TOWNSQUARE_PUBLISH_STATE", "true")
    assert PackagerSettings().beside_origin().writes_state
    monkeypatch.setenv("TOWNSQUARE_PUBLISH_STATE", "false")
    assert not PackagerSettings().writes_state


async def test_a_stored_live_playlist_never_outlives_the_live_edge(
    packager_origin: tuple[Packager, str]
) -> None:
    """A room not on air here is answered from the store's copy: without ENDLIST that copy
    is overtaken within a segment, so it is never long-lived; with ENDLIST it is final."""
    packager, base = packager_origin
    live = (b"#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n"
            b'#EXT-X-MAP:URI="e1-x/init.mp4"\n#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000Z\n'
            b"#EXTINF:1.92,\ne1-x/s4.m4s\n")
    await packager.store.put("live/elsewhere/aac96/live.m3u8", live, "no-cache")
    await packager.store.put("live/over/aac96/live.m3u8", live + b"#EXT-X-ENDLIST\n", "no-cache")
    async with httpx.AsyncClient() as client:
        plain = await client.get(f"{base}/live/elsewhere/aac96/live.m3u8")
        assert plain.status_code == 200 and plain.headers["cache-control"] == "public, max-age=1"
        blocking = await client.get(f"{base}/live/elsewhere/aac96/live.m3u8",
                                    params={"_HLS_msn": 5, "_HLS_part": 0}, timeout=10)
        assert blocking.headers["cache-control"] == "public, max-age=0"
        ended = await client.get(f"{base}/live/over/aac96/live.m3u8")
        assert ended.headers["cache-control"] == "public, max-age=86400"


async def test_a_standalone_origin_reads_privacy_status_and_directory_from_the_rooms_database(
        tmp_path: Path) -> None:
    from registry import Registry, default_url

    data = tmp_path / "data"
    registry = await Registry.open(default_url(data))
    await registry.create_room("secret", "h1", time.time(), private=True, title="Board meeting")
    await registry.create_room("town", "h2", time.time(), title="Town hall")
    await registry.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (running(["ingest", "--room", "secret", "--source", "tone", "--data", str(data)],
                  tmp_path / "ingest.log", None),
          running(["origin", "--port", str(port), "--data", str(data)],
                  tmp_path / "origin.log", f"{base}/healthz")):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 20
            # The broadcast's objects are in the store, but a private room is never
            # served under /live/.
            while not list((data / "live" / "secret").glob("*/live.m3u8")):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (await client.get("/live/secret/master.m3u8")).status_code == 404
            assert (await client.get("/live/secret/status.json")).status_code == 404
            town = await client.get("/live/town/status.json")
            assert town.status_code == 200
            assert town.json()["title"] == "Town hall"
            assert town.json()["state"] == "waiting"
            listing = (await client.get("/live/rooms.json")).json()
            assert "secret" not in str(listing)


async def test_a_standalone_origin_without_a_rooms_database_says_so(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "origin.log"
    with running(["origin", "--port", str(port), "--data", str(tmp_path / "data")], log,
                 f"http://127.0.0.1:{port}/healthz"):
        pass
    said = log.read_text()
    assert "every room is served as public" in said
    # And where the live state it follows comes from.
    assert "TOWNSQUARE_PUBLISH_STATE=true" in said
