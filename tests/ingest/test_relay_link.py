"""A speaker relayed from one node to the owner of their room, over real HTTP between two nodes
in one process, each serving its control API (the packager is the recording twin): the owner
mixes the relayed audio; a relay the owner cannot take is refused before any audio is
streamed, so the relaying node learns of it at once instead of when the speaker stops; and
when the owner hands the room over and the relaying node takes it, the speaker goes into its
mix without a reconnect, muted and named as the owner last made them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from ingest.api import PublicUrls, build_app
from ingest.metrics import IngestMetrics
from ingest.node import Node
from ingest.relay import RELAY_PATH, RELAYS_GONE_SILENT, RelayLink, link_url, receive, to_wire
from ingest.rooms import Room, Rooms, Speaker
from ingest.whip import WhipEndpoint
from registry import Registry, default_url
from serving.http import http_server, serve_http
from serving.tasks import cancel_and_wait
from tests.ingest.twins import RecordedBroadcast, RecordingPackager
from tests.support.procs import free_port

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Short, so that a hand-over's adoption is quick, and long enough that a renewal stalled by
# a busy machine (SQLite, three test workers) does not stop the owner's room mid-test.
LEASE = 6.0
BLOCK = np.full((2, 960), 0.25, dtype=np.float32)  # 20 ms


@dataclass
class Served:
    rooms: Rooms
    url: str  # its control API


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Served, Served]]:
    """Node 1, which will own the rooms, and node 2, which relays to it; both serve their
    control API on a real port, as the owner tells the relaying node of changes there."""
    registry = await Registry.open(default_url(tmp_path))
    nodes: list[Served] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for n in (1, 2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            rooms = Rooms(RecordingPackager(), registry, IngestMetrics())
            rooms.node = Node(registry, f"node-{n}", url, url, 1935, 100, LEASE)
            rooms.relay_token = TOKEN
            await rooms.node.start(rooms)
            metrics = IngestMetrics()
            app = build_app(rooms, WhipEndpoint(rooms, metrics), metrics, TOKEN,
                            PublicUrls(url, "rtmp://127.0.0.1:1935", url, url))
            started = asyncio.Event()
            tasks.append(asyncio.get_running_loop().create_task(
                serve_http(http_server(app, "127.0.0.1", port), started)))
            await asyncio.wait_for(started.wait(), 10)
            nodes.append(Served(rooms, url))
        yield nodes[0], nodes[1]
    finally:
        await cancel_and_wait(*tasks)
        for node in nodes:
            await node.rooms.close()
        await registry.close()


async def _speak_until(link_open: asyncio.Event, push: RelayLink, seconds: float) -> float:
    """Push 20 ms blocks in real time until the link closes or `seconds` pass; how long."""
    start = time.monotonic()
    while not link_open.is_set() and time.monotonic() - start < seconds:
        push.push(BLOCK)
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _relayed(owner: Room, speak: Callable[[], None]) -> Speaker:
    """Speak until the owner mixes a relayed speaker; that speaker, as the owner has them."""
    for _ in range(250):
        speak()
        await asyncio.sleep(0.02)
        relayed = [s for s in owner.speakers.values() if s.kind == "relay"]
        if relayed:
            return relayed[0]
    raise AssertionError("the owner never mixed the relayed speaker")


async def test_the_owner_mixes_a_speaker_relayed_from_another_node(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    room, _ = await owner.rooms.create("hall")
    await owner.rooms.admit(room)  # node 1 takes the lease and puts the room on air
    here = await other.rooms.find("hall")
    speaker = await other.rooms.speak(here, "rtmp", "test", name="Guest")
    assert speaker.relay is not None and speaker.id in here.relayed
    relay = speaker.relay
    mixed = await _relayed(room, lambda: relay.push(BLOCK))
    assert mixed.name == "Guest" and mixed.source == ("node-2", speaker.id)
    other.rooms.leave(here, speaker)
    await asyncio.sleep(0.5)
    assert not [s for s in room.speakers.values() if s.kind == "relay"], "the relay ended"


async def test_a_relay_the_owner_cannot_take_is_refused_before_audio_is_streamed(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    await other.rooms.create("quiet")  # in the registry, on air nowhere: node 1 won't take it
    closed = asyncio.Event()
    link = RelayLink(f"{owner.url}{RELAY_PATH}quiet", TOKEN, closed.set)
    # The owner waits up to 5 s for a room it might be putting on air, then refuses; the
    # relaying node hears so while its speaker is still talking.
    took = await _speak_until(closed, link, 15.0)
    await link.close()
    assert closed.is_set(), "the relay was never told it was refused"
    assert took < 10.0, took
    assert not (await owner.rooms.find("quiet")).speakers


async def test_a_relay_sent_after_the_room_stopped_here_is_refused_unread(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    await other.rooms.create("moved")  # in the registry, on air nowhere
    owner.rooms.node.draining = True  # type: ignore[union-attr]  # node 1 is stopping
    # The relaying node asked before node 1 began to stop, and its relay comes now, with a
    # speaker who keeps talking (30 s of audio, at their pace).

    async def talking() -> AsyncIterator[bytes]:
        for _ in range(1500):
            yield to_wire(BLOCK)
            await asyncio.sleep(0.02)

    async with httpx.AsyncClient(timeout=10) as client:
        try:
            answer = await asyncio.wait_for(client.post(
                f"{owner.url}{RELAY_PATH}moved", content=talking(),
                headers={"Authorization": f"Bearer {TOKEN}"}), 15)
            status: int | None = answer.status_code
            assert "retry-after" in answer.headers  # a refusal that says when to ask again
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            status = None  # closed on the sender while it was still sending: refused too
    assert status in (503, None), status
    assert not (await owner.rooms.find("moved")).speakers


async def _guest(owner: Served, other: Served) -> tuple[Room, Room, Speaker, Speaker,
                                                         asyncio.Event]:
    """Room "hall" on air on `owner` and a guest who reached `other`, relayed and mixed: (the
    room at the owner, the room at the guest's node, the guest there, the guest as mixed at
    the owner, set when the guest's connection is closed)."""
    room, _ = await owner.rooms.create("hall")
    await owner.rooms.admit(room)
    here = await other.rooms.find("hall")
    dropped = asyncio.Event()

    async def disconnect() -> None:  # what the speaker's RTMP session would do: hang up
        dropped.set()

    speaker = await other.rooms.speak(here, "rtmp", "test", disconnect, name="Guest")
    mixed = await _relayed(room, lambda: speaker.push(BLOCK))
    return room, here, speaker, mixed, dropped


async def _mute(api_url: str, speaker_id: str, muted: bool) -> None:
    """Mute or unmute a speaker through a node's control API, as a host does."""
    async with httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=10) as api:
        r = await api.post(f"/rooms/hall/speakers/{speaker_id}/mute", json={"muted": muted})
        assert r.status_code == 200 and r.json()["muted"] == muted, r.text


async def _a_second_of_voice(speaker: Speaker, program: RecordedBroadcast) -> float:
    """A second of the speaker's voice pushed in real time; the loudest sample of the
    program's last half second."""
    for _ in range(50):
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    return float(np.abs(program.audio(0.5)).max())


async def test_a_relayed_speaker_s_node_takes_the_room_and_keeps_them_connected_muted_and_named(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    _, here, speaker, mixed, dropped = await _guest(owner, other)

    # The host mutes and renames them at the owner (through its API, as any node forwards
    # it): the owner tells the node holding their connection.
    async with httpx.AsyncClient(base_url=owner.url, headers=AUTH, timeout=10) as api:
        r = await api.post(f"/rooms/hall/speakers/{mixed.id}/mute", json={"muted": True})
        assert r.status_code == 200 and r.json()["muted"], r.text
        r = await api.put(f"/rooms/hall/speakers/{mixed.id}/name", json={"name": "Ada"})
        assert r.status_code == 200 and r.json()["name"] == "Ada", r.text
    assert speaker.input.muted and speaker.name == "Ada"
    told = owner.rooms.relayed_changes.labels("told")._value.get()
    assert told == 2, told

    # The owner stops (a deploy): it lets the relay go and hands the room back; the node the
    # speaker reached takes the room and the speaker with it, without a reconnect.
    await owner.rooms.close()
    deadline = time.monotonic() + 4 * LEASE
    while speaker.id not in here.speakers:
        assert time.monotonic() < deadline, "the speaker was never mixed on their own node"
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    assert here.on_air and not here.relayed and speaker.relay is None
    assert here.speaker_names() == ("Ada",)
    program = here._broadcast
    assert isinstance(program, RecordedBroadcast)

    assert await _a_second_of_voice(speaker, program) < 0.01, "still muted in the mix here"
    await _mute(other.url, speaker.id, False)
    assert await _a_second_of_voice(speaker, program) > 0.1, \
        "unmuted, the speaker is in the mix here"
    assert not dropped.is_set(), "the speaker's connection was kept"


async def test_a_relayed_speaker_stays_in_the_mix_when_the_owner_s_program_is_restarted(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    room, _, speaker, mixed, dropped = await _guest(owner, other)
    await _mute(owner.url, mixed.id, True)
    first, epoch = room._broadcast, room.epoch
    assert isinstance(first, RecordedBroadcast)
    # The owner's epoch fails (an encoder that raises): the room goes back on air on the
    # same node, in a new epoch, and the relayed guest goes into its mix as the host left
    # them, with the relay from the other node kept.
    first.fail("the encoder failed")
    deadline = time.monotonic() + 10
    while not (room.on_air and room._broadcast is not first):
        assert time.monotonic() < deadline, "the room never came back on air"
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    program = room._broadcast
    assert isinstance(program, RecordedBroadcast) and room.epoch == epoch + 1
    assert room.speakers.get(mixed.id) is mixed and mixed.input.muted
    assert room._mixer is not None and room._mixer.inputs[mixed.id] is mixed.input

    assert await _a_second_of_voice(speaker, program) < 0.01, "still muted in the new mix"
    await _mute(owner.url, mixed.id, False)
    assert await _a_second_of_voice(speaker, program) > 0.1, "unmuted, the relayed guest is heard"
    assert not dropped.is_set() and speaker.relay is not None, "the relay was kept"


async def test_a_relaying_node_that_stops_ends_its_relays_before_it_goes(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    room, _, speaker, mixed, _ = await _guest(owner, other)
    relay = speaker.relay
    assert relay is not None
    # The node the guest reached stops (a deploy): the relay's body ends there, in order,
    # so that the owner lets the guest go at once, not once their silence is noticed or the
    # process is gone.
    await other.rooms.close()
    assert relay._task.done(), "the relay was left streaming"
    deadline = time.monotonic() + 2.0
    while mixed.id in room.speakers:
        assert time.monotonic() < deadline, "the owner still mixes the guest"
        await asyncio.sleep(0.02)


async def test_a_relayed_speaker_is_carried_on_when_the_owner_is_asked_in_the_midst_of_its_stop(
        cluster: tuple[Served, Served]) -> None:
    owner, other = cluster
    room, here, speaker, _, dropped = await _guest(owner, other)
    # A speaker of the owner's own whose connection takes its time to close: the owner's stop
    # lets the relay go first, and is still on its way (the room on air) when the relaying
    # node asks whether the owner takes relays.
    closing = asyncio.Event()

    async def slow_hang_up() -> None:
        closing.set()
        await asyncio.sleep(3.0)

    owner.rooms.join(room, "rtmp", "host", slow_hang_up, name="Host")
    stopping = asyncio.create_task(owner.rooms.close())
    await closing.wait()
    async with httpx.AsyncClient(timeout=10) as client:
        asked = await client.get(f"{owner.url}{RELAY_PATH}hall", headers=AUTH)
    assert asked.status_code == 503, "a room being stopped takes no relays"
    while not stopping.done():
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    await stopping
    deadline = time.monotonic() + 4 * LEASE
    while speaker.id not in here.speakers:
        assert not dropped.is_set(), "the relaying node took the stop for a removal"
        assert time.monotonic() < deadline, "the speaker was never mixed on their own node"
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    assert not dropped.is_set()


async def test_a_relay_says_who_it_carries_and_a_change_its_node_cannot_hear_still_holds(
        cluster: tuple[Served, Served]) -> None:
    owner, _ = cluster
    room, _ = await owner.rooms.create("hall")
    await owner.rooms.admit(room)
    closed = asyncio.Event()
    # A relay from a node that has left the directory since (or never was in it), of a
    # speaker another owner had muted.
    link = RelayLink(link_url(f"{owner.url}{RELAY_PATH}hall", "Grace", "node-9", "rtmp-4",
                              muted=True), TOKEN, closed.set)
    try:
        mixed = await _relayed(room, lambda: link.push(BLOCK))
        assert mixed.input.muted and mixed.name == "Grace" and mixed.source == ("node-9",
                                                                               "rtmp-4")
        async with httpx.AsyncClient(base_url=owner.url, headers=AUTH, timeout=10) as api:
            r = await api.post(f"/rooms/hall/speakers/{mixed.id}/mute", json={"muted": False})
        assert r.status_code == 200 and not r.json()["muted"], r.text
        assert not mixed.input.muted, "the change holds at the owner"
        assert owner.rooms.relayed_changes.labels("untold")._value.get() == 1
    finally:
        await link.close()


async def test_a_relay_whose_body_stops_coming_ends_instead_of_waiting_for_ever() -> None:
    # A relaying node cut off by a partition sends no FIN: the owner would hold its speaker
    # (listed, silent, counted against the room's speakers) for as long as TCP keeps quiet.
    got: list[np.ndarray] = []
    silent = RELAYS_GONE_SILENT._value.get()

    async def body() -> AsyncIterator[bytes]:
        yield to_wire(BLOCK)
        await asyncio.Event().wait()  # nothing more, and no end
        yield b""

    samples = await asyncio.wait_for(receive(body(), got.append, idle=0.3), 10)
    assert samples == BLOCK.shape[1] and len(got) == 1
    assert RELAYS_GONE_SILENT._value.get() == silent + 1
