"""A speaker relayed from one node to the owner of their room, over real HTTP between two nodes
in one process (the packager is the recording twin): the owner mixes the relayed audio, and a
relay the owner cannot take is refused before any audio is streamed, so the relaying node
learns of it at once instead of when the speaker stops; and when the owner hands the room over
and the relaying node takes it, the speaker goes into its mix without a reconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ingest.api import PublicUrls, build_app
from ingest.metrics import IngestMetrics
from ingest.node import Node
from ingest.relay import RELAY_PATH, RelayLink
from ingest.rooms import Rooms
from ingest.whip import WhipEndpoint
from registry import Registry, default_url
from serving.http import http_server, serve_http
from serving.tasks import cancel_and_wait
from tests.ingest.twins import RecordedBroadcast, RecordingPackager
from tests.support.procs import free_port

TOKEN = "test-admin-token-0123456789"
LEASE = 3.0
BLOCK = np.full((2, 960), 0.25, dtype=np.float32)  # 20 ms


@dataclass
class Owner:
    rooms: Rooms
    url: str


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Owner, Rooms]]:
    """Node 1 serving its control API on a real port, node 2 relaying to it."""
    registry = await Registry.open(default_url(tmp_path))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    nodes: list[Rooms] = []
    for n, control in ((1, url), (2, "http://127.0.0.1:9")):
        rooms = Rooms(RecordingPackager(), registry, IngestMetrics())
        rooms.node = Node(registry, f"node-{n}", control, control, 1935, 100, LEASE)
        rooms.relay_token = TOKEN
        await rooms.node.start(rooms)
        nodes.append(rooms)
    metrics = IngestMetrics()
    app = build_app(nodes[0], WhipEndpoint(nodes[0], metrics), metrics, TOKEN,
                    PublicUrls(url, "rtmp://127.0.0.1:1935", url, url))
    server = http_server(app, "127.0.0.1", port)
    started = asyncio.Event()
    task = asyncio.get_running_loop().create_task(serve_http(server, started))
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield Owner(nodes[0], url), nodes[1]
    finally:
        await cancel_and_wait(task)
        for rooms in nodes:
            await rooms.close()
        await registry.close()


async def _speak_until(link_open: asyncio.Event, push: RelayLink, seconds: float) -> float:
    """Push 20 ms blocks in real time until the link closes or `seconds` pass; how long."""
    start = time.monotonic()
    while not link_open.is_set() and time.monotonic() - start < seconds:
        push.push(BLOCK)
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_the_owner_mixes_a_speaker_relayed_from_another_node(
        cluster: tuple[Owner, Rooms]) -> None:
    owner, other = cluster
    room, _ = await owner.rooms.create("hall")
    await owner.rooms.admit(room)  # node 1 takes the lease and puts the room on air
    here = await other.find("hall")
    speaker = await other.speak(here, "rtmp", "test", name="Guest")
    assert speaker.relay is not None and speaker.id in here.relayed
    for _ in range(100):
        speaker.relay.push(BLOCK)
        await asyncio.sleep(0.02)
        relayed = [s for s in room.speakers.values() if s.kind == "relay"]
        if relayed:
            break
    assert [s.name for s in relayed] == ["Guest"]
    other.leave(here, speaker)
    await asyncio.sleep(0.5)
    assert not [s for s in room.speakers.values() if s.kind == "relay"], "the relay ended"


async def test_a_relay_the_owner_cannot_take_is_refused_before_audio_is_streamed(
        cluster: tuple[Owner, Rooms]) -> None:
    owner, other = cluster
    await other.create("quiet")  # in the registry, on air nowhere: node 1 will not take it
    closed = asyncio.Event()
    link = RelayLink(f"{owner.url}{RELAY_PATH}quiet", TOKEN, closed.set)
    # The owner waits up to 5 s for a room it might be putting on air, then refuses; the
    # relaying node hears so while its speaker is still talking.
    took = await _speak_until(closed, link, 15.0)
    await link.close()
    assert closed.is_set(), "the relay was never told it was refused"
    assert took < 10.0, took
    assert not (await owner.rooms.find("quiet")).speakers


async def test_a_relayed_speaker_stays_connected_and_is_mixed_here_when_the_room_comes_here(
        cluster: tuple[Owner, Rooms]) -> None:
    owner, other = cluster
    room, _ = await owner.rooms.create("hall")
    await owner.rooms.admit(room)
    here = await other.find("hall")
    dropped = asyncio.Event()

    async def disconnect() -> None:  # what the speaker's RTMP session would do: hang up
        dropped.set()

    speaker = await other.speak(here, "rtmp", "test", disconnect, name="Guest")
    assert speaker.relay is not None
    for _ in range(100):
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
        if any(s.kind == "relay" for s in room.speakers.values()):
            break
    else:
        raise AssertionError("the owner never mixed the relayed speaker")

    # The owner stops (a deploy): it lets the relay go and hands the room back; the node the
    # speaker reached takes the room and the speaker with it, without a reconnect.
    await owner.rooms.close()
    deadline = time.monotonic() + 4 * LEASE
    while speaker.id not in here.speakers:
        assert time.monotonic() < deadline, "the speaker was never mixed on their own node"
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    assert here.on_air and not here.relayed and speaker.relay is None
    assert here.speaker_names() == ("Guest",)
    for _ in range(50):  # a second more of their voice, heard in this node's program
        speaker.push(BLOCK)
        await asyncio.sleep(0.02)
    program = here._broadcast
    assert isinstance(program, RecordedBroadcast)
    assert float(np.abs(program.audio(0.5)).max()) > 0.1, "the speaker is in the mix here"
    assert not dropped.is_set(), "the speaker's connection was kept"
