"""A room's program that stops on its own (its broadcast refuses audio: an encoder or publishing
failure ended the epoch) goes back on air in a new epoch on the same node, its speakers kept;
and a room taken again on the node that lost it keeps its program running (the late-block
count of the clock before went negative in the metric, whose refusal stopped the program: a
room heard nothing for good while it said it was live)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from hls.names import room_key
from ingest.node import Node
from ingest.rooms import Room, Rooms
from packager.cmaf import LadderEncoder, LadderEvent
from packager.errors import EncodeError
from packager.pipeline import Broadcast, Packager
from packager.settings import PackagerSettings
from registry import Registry, default_url
from tests.ingest.twins import RecordedBroadcast, RecordingPackager
from tests.support.audio import program_tone

LONG_LEASE = 10.0


async def _until(check: Callable[[], object], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


def _restarts(rooms: Rooms, outcome: str) -> float:
    return float(rooms.metrics.program_restarts.labels(outcome)._value.get())


def _broadcast(room: Room) -> RecordedBroadcast:
    b = room._broadcast
    assert isinstance(b, RecordedBroadcast)
    return b


async def _cluster_node(tmp_path: Path) -> tuple[Rooms, Registry]:
    registry = await Registry.open(default_url(tmp_path))
    rooms = Rooms(RecordingPackager(), registry)
    rooms.node = Node(registry, "node-1", "http://node-1:8001", "http://node-1:8000", 1936, 100,
                      LONG_LEASE)
    await rooms.node.start(rooms)
    return rooms, registry


async def _single(tmp_path: Path) -> tuple[Rooms, None]:
    return Rooms(RecordingPackager(), None), None


@pytest.mark.parametrize("make", [_single, _cluster_node], ids=["single", "cluster"])
async def test_a_room_whose_broadcast_fails_is_back_on_air_with_its_speakers(
        tmp_path: Path, make: Callable[[Path], Awaitable[tuple[Rooms, Registry | None]]]) -> None:
    rooms, registry = await make(tmp_path)
    try:
        room, _ = await rooms.create("hall")
        host = await rooms.speak(room, "rtmp", "host")
        guest = await rooms.speak(room, "whip", "guest")
        await rooms.mute(room, guest.id, True)
        await asyncio.sleep(0.3)
        first, epoch = _broadcast(room), room.epoch
        first.fail("the encoder failed")
        await _until(lambda: room.on_air and room._broadcast is not first)
        assert first.closed and not first.ended, "the failed epoch is suspended, not ended"
        assert room.state == "live" and room.epoch == epoch + 1
        assert _restarts(rooms, "on_air") == 1
        # Both speakers are in the new mix, the guest still muted: the host is heard.
        assert list(room.speakers) == [host.id, guest.id]
        assert room._mixer is not None and room._mixer.inputs[host.id] is host.input
        assert guest.input.muted and not host.input.muted
        host.push(program_tone(0.6, 440, amplitude=0.3))
        guest.push(program_tone(0.6, 1000, amplitude=0.3))
        second = _broadcast(room)
        await asyncio.sleep(1.0)
        heard = second.audio()[0]
        assert np.abs(heard).max() > 0.2, "the host is heard in the new epoch"
        spectrum = np.abs(np.fft.rfft(heard))
        freqs = np.fft.rfftfreq(len(heard), 1 / 48_000)
        assert spectrum[np.abs(freqs - 1000) < 20].max() < 0.01 * spectrum.max(), \
            "the muted guest is not"
    finally:
        await rooms.close()
        if registry is not None:
            await registry.close()


async def test_an_epoch_that_fails_again_soon_is_put_back_after_a_wait(tmp_path: Path) -> None:
    rooms = Rooms(RecordingPackager(), None)
    try:
        room, _ = await rooms.create("hall")
        await rooms.speak(room, "rtmp", "host")
        _broadcast(room).fail("the store refuses everything")
        await _until(lambda: _restarts(rooms, "on_air") == 1)
        second = _broadcast(room)
        second.fail("the store still refuses everything")
        failed_at = time.monotonic()
        await _until(lambda: room._broadcast is not second and room.on_air)
        # The second restart came a second after the failure, not at once (it then doubles).
        assert time.monotonic() - failed_at >= 0.9
        assert room._restart_delay == 1.0 and room.epoch == 3
    finally:
        await rooms.close()


async def test_a_room_taken_again_on_the_node_that_lost_it_keeps_its_program_running(
        tmp_path: Path) -> None:
    rooms, registry = await _cluster_node(tmp_path)
    try:
        room, _ = await rooms.create("hall")
        await rooms.speak(room, "rtmp", "host")
        await asyncio.sleep(0.3)
        time.sleep(0.5)  # noqa: ASYNC251 - the event loop held up: the clock renders late
        await asyncio.sleep(1.2)  # and counts them in the metric, once a second
        assert rooms.metrics.late_blocks._value.get() > 0
        await rooms.lose(room)  # its lease judged lost; the speaker comes back here
        await rooms.speak(room, "rtmp", "host")
        again = _broadcast(room)
        fed = again.samples
        await asyncio.sleep(1.5)  # past the next once-a-second count of late blocks
        clock = room._clock
        assert clock is not None
        assert again.samples - fed >= 48_000, "the program goes on in the new epoch"
        assert clock.stats.hook_errors == 0
        assert _restarts(rooms, "on_air") == 0
    finally:
        await rooms.close()
        await registry.close()


async def test_a_room_whose_encoder_fails_is_heard_again_in_a_new_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    packager = Packager(PackagerSettings(data_dir=data, publish_state=False))
    await packager.start()
    rooms = Rooms(packager, None)
    try:
        room, _ = await rooms.create("hall")
        host = await rooms.speak(room, "rtmp", "host")
        host.push(program_tone(8.0, 440, amplitude=0.3))
        await asyncio.sleep(2.5)
        first = room._broadcast
        assert isinstance(first, Broadcast)
        codec_push = LadderEncoder.push
        given_up: list[str] = []

        def gives_up_once(self: LadderEncoder, pcm: np.ndarray) -> list[LadderEvent]:
            if not given_up:
                given_up.append("once")
                raise EncodeError("the codec gave up")
            return codec_push(self, pcm)

        monkeypatch.setattr(LadderEncoder, "push", gives_up_once)
        await _until(lambda: room.on_air and room._broadcast is not first)
        second = room._broadcast
        assert isinstance(second, Broadcast) and second.epoch.id != first.epoch.id
        playlist = data / room_key("hall", "aac96", "live.m3u8")

        def new_epoch_listed() -> bool:
            text = playlist.read_text() if playlist.exists() else ""
            return text.count(f"{second.epoch.id}/p") >= 10

        await _until(new_epoch_listed)
        text = playlist.read_text()
        assert "#EXT-X-DISCONTINUITY" in text and f"{first.epoch.id}/" in text
        assert _restarts(rooms, "on_air") == 1 and list(room.speakers) == [host.id]
    finally:
        await rooms.close()
        await packager.close()
