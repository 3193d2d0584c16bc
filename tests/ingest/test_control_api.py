"""The rooms API, WHIP and room lifecycle in-process, against a recording packager."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from ingest.api import PublicUrls, build_app
from ingest.errors import BadKey, RoomEnded
from ingest.jitter import MAX_STEER
from ingest.metrics import IngestMetrics
from ingest.rooms import RoomPolicy, Rooms
from ingest.stream_keys import hash_key
from ingest.whip import WhipEndpoint, allow_loopback_candidates
from packager.pipeline import ResumePoint
from registry import Registry, default_url
from tests.ingest.twins import RecordingPackager, ToneTrack, whip_answer, whip_offer
from tests.support.audio import program_tone

TOKEN = "test-admin-token-0123456789"
URLS = PublicUrls("http://ctl", "rtmp://ingest:1935", "http://edge", "http://origin")


class Stack:
    def __init__(self, registry: Registry, idle_timeout: float = 600.0,
                 whip_idle: float = 5.0) -> None:
        self.packager = RecordingPackager()
        self.metrics = IngestMetrics()
        self.registry = registry
        self.rooms = Rooms(self.packager, registry, self.metrics,
                           RoomPolicy(idle_timeout=idle_timeout))
        self.whip = WhipEndpoint(self.rooms, self.metrics, connect_timeout=10,
                                 idle_timeout=whip_idle)
        self.app = build_app(self.rooms, self.whip, self.metrics, TOKEN, URLS)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                      base_url="http://ctl")
        self.admin = {"Authorization": f"Bearer {TOKEN}"}

    async def create(self, name: str) -> dict[str, str]:
        r = await self.http.post("/rooms", json={"name": name}, headers=self.admin)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def close(self) -> None:
        await self.whip.close()
        await self.rooms.close()
        await self.http.aclose()
        await self.registry.close()


async def make_stack(tmp: Path, idle_timeout: float = 600.0, whip_idle: float = 5.0) -> Stack:
    return Stack(await Registry.open(default_url(tmp)), idle_timeout, whip_idle)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    allow_loopback_candidates(True)
    s = await make_stack(tmp_path)
    yield s
    await s.close()


# --- admin API ------------------------------------------------------------------------

async def test_rooms_api_requires_the_admin_token(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        r = await stack.http.post("/rooms", json={"name": "a"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (await stack.http.get("/rooms", headers={})).status_code == 401
    assert (await stack.http.get("/healthz")).status_code == 200
    assert (await stack.http.get("/docs")).status_code == 200
    spec = (await stack.http.get("/openapi.json")).json()
    assert "/rooms/{room}/end" in spec["paths"] and "/whip/{room}" in spec["paths"]


async def test_create_shows_the_key_once_and_stores_only_its_hash(stack: Stack,
                                                                  tmp_path: Path) -> None:
    room = await stack.create("town-hall")
    key = room["stream_key"]
    assert key.startswith("tsk_") and len(key) - 4 >= 32  # ≥ 192 bits of token_urlsafe
    assert room["rtmp_url"] == "rtmp://ingest:1935/live"
    assert room["rtmp_publish_url"] == f"rtmp://ingest:1935/live/{key}"
    assert room["whip_url"] == "http://ctl/whip/town-hall"
    assert room["listener_url"] == "http://edge/listen/town-hall"
    assert room["playlist_url"] == "http://origin/live/town-hall/master.m3u8"
    state = (await stack.http.get("/rooms/town-hall", headers=stack.admin)).json()
    assert key not in json.dumps(state)
    saved = await stack.registry.get_room("town-hall")
    assert saved is not None and saved.key_hash == hash_key(key)
    assert key.encode() not in (tmp_path / "townsquare.db").read_bytes()
    # A restarted service still knows the key by its hash.
    again = Rooms(RecordingPackager(), stack.registry)
    await again.load()
    assert again.by_key(key).name == "town-hall"
    two = await stack.create("other")
    assert two["stream_key"] != key


async def test_create_refuses_duplicates_and_bad_names(stack: Stack) -> None:
    await stack.create("dup")
    r = await stack.http.post("/rooms", json={"name": "dup"}, headers=stack.admin)
    assert r.status_code == 409
    for bad in ("Caps", "-dash", "a" * 65, "sp ace", "../etc"):
        r = await stack.http.post("/rooms", json={"name": bad}, headers=stack.admin)
        assert r.status_code == 422, bad
    r = await stack.http.post("/rooms", headers=stack.admin)
    assert r.status_code == 201 and r.json()["name"].startswith("room-")
    assert (await stack.http.get("/rooms/nope", headers=stack.admin)).status_code == 404


async def test_oversized_bodies_get_413(stack: Stack) -> None:
    r = await stack.http.post("/rooms", content=b"{" + b" " * 100_000 + b"}",
                              headers={**stack.admin, "Content-Type": "application/json"})
    assert r.status_code == 413


async def test_end_room_closes_the_broadcast_and_kills_the_key(stack: Stack) -> None:
    room = await stack.create("ending")
    r = stack.rooms.get("ending")
    stack.rooms.join(r, "rtmp", "test")
    await asyncio.sleep(0.1)
    res = await stack.http.post("/rooms/ending/end", headers=stack.admin)
    assert res.status_code == 200
    body = res.json()
    assert body["state"] == "ended" and body["ended_at"] and body["duration_seconds"] > 0
    assert stack.packager.broadcasts[0].closed
    with pytest.raises(BadKey):
        stack.rooms.by_key(room["stream_key"])
    with pytest.raises(RoomEnded):
        stack.rooms.check_key("ending", room["stream_key"])
    # The name is free again, with a new key and a new broadcast.
    await stack.create("ending")


async def test_an_ended_room_s_name_is_free_once_the_database_lets_go(tmp_path: Path) -> None:
    """The end of a room reaches the registry behind the request that ended it. Another
    connection holds the database's write lock past the registry's busy timeout while the room
    ends: the create of the same name waits for the end to be written, instead of a 409."""
    import sqlite3

    s = Stack(await Registry.open(default_url(tmp_path), command_timeout=0.3))
    try:
        await s.create("again")
        holder = sqlite3.connect(tmp_path / "townsquare.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            res = await s.http.post("/rooms/again/end", headers=s.admin)
            assert res.status_code == 200 and res.json()["state"] == "ended"
            assert s.rooms.ledger.pending  # the end is not in the registry yet
            create = asyncio.create_task(s.http.post("/rooms", json={"name": "again"},
                                                     headers=s.admin))
            await asyncio.sleep(1.0)
            assert not create.done()  # waiting for the old room's end, not refused
        finally:
            holder.execute("COMMIT")
            holder.close()
        r = await create
        assert r.status_code == 201, r.text
        assert s.rooms.get("again").state == "waiting"
    finally:
        await s.close()


async def test_mute_and_remove_a_speaker(stack: Stack) -> None:
    await stack.create("panel")
    room = stack.rooms.get("panel")
    dropped = asyncio.Event()

    async def disconnect() -> None:
        dropped.set()

    speaker = stack.rooms.join(room, "rtmp", "test", disconnect)
    url = f"/rooms/panel/speakers/{speaker.id}"
    r = await stack.http.post(url + "/mute", json={"muted": True}, headers=stack.admin)
    assert r.status_code == 200 and r.json()["muted"] is True and speaker.input.muted
    r = await stack.http.post(url + "/mute", json={"muted": False}, headers=stack.admin)
    assert r.json()["muted"] is False
    assert (await stack.http.delete(url, headers=stack.admin)).status_code == 204
    assert dropped.is_set() and not room.speakers
    assert (await stack.http.delete(url, headers=stack.admin)).status_code == 404


# --- lifecycle ------------------------------------------------------------------------

async def test_reconnect_is_heard_on_the_same_timeline(stack: Stack) -> None:
    await stack.create("again")
    room = stack.rooms.get("again")
    first = stack.rooms.join(room, "rtmp", "a")
    first.push(program_tone(0.5, 440, amplitude=0.3))
    await asyncio.sleep(0.6)
    stack.rooms.leave(room, first)
    await asyncio.sleep(0.5)  # nobody: silence keeps the timeline going
    second = stack.rooms.join(room, "rtmp", "a")
    second.push(program_tone(0.5, 880, amplitude=0.3))
    await asyncio.sleep(0.8)
    assert len(stack.packager.broadcasts) == 1, "a reconnect must not start a new broadcast"
    b = stack.packager.broadcasts[0]
    pcm = b.audio()[0]
    assert abs(b.samples / 48_000 - 1.9) < 0.25  # fed at real time, whatever happened
    blocks = pcm[: len(pcm) // 960 * 960].reshape(-1, 960)
    loud = np.abs(blocks).max(axis=1) > 0.05
    # tone, then a silent gap, then tone again
    first_on = np.argmax(loud)
    gap = np.argmax(~loud[first_on:]) + first_on
    back = np.argmax(loud[gap:]) + gap
    assert first_on < gap < back and back - gap >= 20


async def test_idle_room_ends_by_itself(tmp_path: Path) -> None:
    s = await make_stack(tmp_path, idle_timeout=0.5)
    try:
        await s.create("quiet")
        room = s.rooms.get("quiet")
        sp = s.rooms.join(room, "whip", "x")
        s.rooms.leave(room, sp)
        for _ in range(40):
            if room.state == "ended":
                break
            await asyncio.sleep(0.1)
        assert room.state == "ended" and "idle" in (room.end_reason or "")
        assert s.packager.broadcasts[0].closed
        assert "townsquare_ingest_rooms_ended_total{reason=\"idle\"} 1.0" in s.metrics.render().decode()
    finally:
        await s.close()


# --- WHIP -----------------------------------------------------------------------------

async def test_whip_publish_answer_audio_and_delete(stack: Stack) -> None:
    room = await stack.create("whip-room")
    pc, offer = await whip_offer(ToneTrack(1500))
    try:
        r = await stack.http.post("/whip/whip-room", content=offer, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {room['stream_key']}"})
        assert r.status_code == 201, r.text
        assert r.headers["content-type"] == "application/sdp"
        location = r.headers["location"]
        assert location.startswith("/whip/whip-room/")
        assert r.text.startswith("v=0") and "a=recvonly" in r.text and "opus" in r.text.lower()
        await whip_answer(pc, r.text)
        for _ in range(100):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert pc.connectionState == "connected"
        await asyncio.sleep(1.5)
        heard = stack.packager.broadcasts[0].audio(last_seconds=1.0)
        spec = np.abs(np.fft.rfft(heard[0]))
        # The speaker's jitter buffer may still be steering its level after the connection's
        # first burst, playing up to 2 % fast (1530 Hz once on a loaded machine).
        steering = 1500 * MAX_STEER
        assert abs(np.argmax(spec) * 48_000 / heard.shape[1] - 1500) <= steering + 2
        speakers = stack.rooms.get("whip-room").speakers
        assert [s.kind for s in speakers.values()] == ["whip"]

        patch = await stack.http.patch(location, content="a=end-of-candidates")
        assert patch.status_code == 405
        bad = await stack.http.delete(location, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        r = await stack.http.delete(location,
                                    headers={"Authorization": f"Bearer {room['stream_key']}"})
        assert r.status_code == 200
        assert not stack.rooms.get("whip-room").speakers
        again = await stack.http.delete(location,
                                        headers={"Authorization": f"Bearer {room['stream_key']}"})
        assert again.status_code == 404
    finally:
        await pc.close()


class FallsSilent(ToneTrack):
    """A microphone that stops after `seconds` with its connection left open: a browser that
    went away (a closed lid, a crashed tab) without a goodbye."""

    def __init__(self, freq: float, seconds: float) -> None:
        super().__init__(freq)
        self.seconds = seconds

    async def recv(self) -> av.AudioFrame:
        if self._pts >= self.seconds * 48_000:
            await asyncio.Event().wait()  # never: no more audio, ICE and DTLS still up
        return await super().recv()


async def test_a_whip_publisher_whose_audio_stops_is_let_go(tmp_path: Path) -> None:
    allow_loopback_candidates(True)
    stack = await make_stack(tmp_path, whip_idle=1.0)
    pc, offer = await whip_offer(FallsSilent(1500, 1.0))
    try:
        room = await stack.create("quiet-mic")
        r = await stack.http.post("/whip/quiet-mic", content=offer, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {room['stream_key']}"})
        assert r.status_code == 201, r.text
        await whip_answer(pc, r.text)
        speakers = stack.rooms.get("quiet-mic").speakers
        for _ in range(100):
            if speakers:
                break
            await asyncio.sleep(0.05)
        assert [s.kind for s in speakers.values()] == ["whip"]
        # Its audio stops a second in; a second of no audio later the session is closed, where
        # ICE's consent check would have kept it listed for 30 s. The speaker leaves the mix at
        # once; the session stays counted against the limits until its peer connection has
        # closed, which on a busy machine takes a moment longer.
        for _ in range(200):
            if not speakers and not stack.whip.sessions:
                break
            await asyncio.sleep(0.05)
        assert not speakers, "the silent publisher is still listed"
        assert not stack.whip.sessions, "the silent publisher's session is still open"
        assert stack.metrics.whip_idle_closed._value.get() == 1
    finally:
        await pc.close()
        await stack.close()


async def test_whip_refusals_have_clear_statuses(stack: Stack) -> None:
    room = await stack.create("strict")
    good = {"Content-Type": "application/sdp", "Authorization": f"Bearer {room['stream_key']}"}
    pc, offer = await whip_offer(ToneTrack(440))
    await pc.close()
    cases = [
        ({**good, "Content-Type": "application/json"}, offer, 415),
        ({**good, "Authorization": "Bearer wrong"}, offer, 401),
        ({"Content-Type": "application/sdp"}, offer, 401),
        (good, "hello", 400),
        (good, "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 406),
        (good, "v=0\r\n" + "a=x\r\n" * 20_000, 413),
    ]
    for headers, body, status in cases:
        r = await stack.http.post("/whip/strict", content=body, headers=headers)
        assert r.status_code == status, (status, r.text)
    r = await stack.http.post("/whip/no-room", content=offer, headers=good)
    assert r.status_code == 401  # a room that does not exist looks like a wrong key
    opts = await stack.http.options("/whip/strict")
    assert opts.status_code == 204 and opts.headers["accept-post"] == "application/sdp"
    assert not stack.packager.broadcasts, "a refused offer must not start the room"


class GatedResume(RecordingPackager):
    """The recording twin whose store tells a room's timeline only once `opened` is set: a
    restart reading from a slow store while speakers are already reconnecting."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def resume_point(self, room: str, wait: float = 0.0) -> ResumePoint:
        await self.opened.wait()
        return await super().resume_point(room, wait)


async def test_a_speaker_back_before_their_room_has_resumed_joins_its_broadcast(
        tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    first = Rooms(RecordingPackager(), registry, IngestMetrics())
    room, _ = await first.create("back-soon")
    await first.speak(room, "rtmp", "before the restart")
    broadcast = room.broadcast_id
    await first.close()  # stopped, not ended: the room is live in the registry
    packager = GatedResume()
    again = Rooms(packager, registry, IngestMetrics())
    try:
        resuming = asyncio.create_task(again.resume(await again.load()))
        here = again.get("back-soon")
        # The speaker's client reconnects (RTMP is already listening) while the room is read
        # back: they wait for it rather than start a new broadcast under it.
        speaking = asyncio.create_task(again.speak(here, "rtmp", "after the restart"))
        await asyncio.sleep(0.3)
        assert not speaking.done(), "the speaker joined a room that was not back on air"
        packager.opened.set()
        await resuming
        speaker = await speaking
        assert here.broadcast_id == broadcast and here.epoch == 2
        assert [b.broadcast_id for b in packager.broadcasts] == [broadcast]
        assert list(here.speakers) == [speaker.id]
    finally:
        await again.close()
        await registry.close()
