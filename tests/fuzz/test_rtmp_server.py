"""The RTMP server over real TCP against mutated publish sessions (moved here, with Hypothesis,
from tests/ingest/test_fuzz.py, whose checks it keeps).

Mutants start from ffmpeg 5.1's real sessions, most with the handshake left whole, so they reach
connect, publish with a valid key, the AAC sequence header and frames before they break. Every
connection must be closed by the server within a deadline after the client's EOF, no session may
end in an internal error, another room on air must keep real time throughout, a replay of the
last inputs must not grow the process (bounds.rss_growth_over), and a real ffmpeg publisher
must be heard afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.metrics import IngestMetrics
from ingest.rooms import Room, Rooms
from ingest.rtmp.chunk import ChunkHeader, Message, encode_message
from ingest.rtmp.messages import Command
from ingest.rtmp.server import RtmpServer
from ingest.stream_keys import hash_key
from tests.fuzz import seeds
from tests.fuzz.bounds import REPLAY, rss_growth_over
from tests.fuzz.loop_thread import LoopThread
from tests.fuzz.mutate import mutated
from tests.fuzz.profiles import count, fuzz_settings
from tests.ingest.twins import RecordedBroadcast, RecordingPackager

BATCH = 25  # connections thrown at once: one Hypothesis example
CLOSE_DEADLINE = 5.0  # the server must have closed a connection this long after its EOF
RSS_GROWTH_BOUND = 32 << 20

HS = seeds.rtmp_sessions()[0][: seeds.HANDSHAKE]
CRAFTED = (
    HS + bytes(ChunkHeader(0, 3, 0, 0xFFFFFF, 20, 0)),  # a 16 MB command announced
    HS + encode_message(Message(1, 0, 0, struct.pack(">I", 0x7FFFFFFF), 2), 128),
    HS + encode_message(Message(1, 0, 0, b"\0\0\0\0", 2), 128),
    HS + encode_message(Message(20, 0, 0, b"\x03" + b"\x00\x01a\x03" * 100, 3), 128),
    HS + encode_message(Command("publish", 5.0, None, (seeds.GOLDEN_KEY,)).to_message(1), 128),
    HS + encode_message(Message(17, 0, 0, b"\x05garbage", 3), 128),
    HS + b"".join(bytes(ChunkHeader(0, 3 + i, 0, 300, 8, 1)) + bytes(128) for i in range(64)),
    b"\x06" + bytes(1536),  # RTMPE
    b"\x03" + bytes(100),  # C1 cut short
    b"",
)

streams = st.one_of(
    mutated(seeds.rtmp_sessions(), keep=seeds.HANDSHAKE),
    mutated(seeds.rtmp_sessions(), keep=seeds.HANDSHAKE, max_edits=2),
    mutated(seeds.rtmp_sessions()),
    st.binary(max_size=3000).map(lambda b: HS + b),
    st.binary(max_size=5000),
    st.sampled_from(CRAFTED),
)


async def _send_and_wait_for_close(port: int, data: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError):
            return True  # the server closed on us mid-send: that is an answer too
        try:
            while await asyncio.wait_for(reader.read(65_536), CLOSE_DEADLINE):
                pass
        except (ConnectionError, OSError):
            pass
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


async def _throw(port: int, batch: list[bytes]) -> list[bool]:
    return list(await asyncio.gather(*(_send_and_wait_for_close(port, m) for m in batch)))


@dataclass
class Stage:
    rooms: Rooms
    metrics: IngestMetrics
    server: RtmpServer
    packager: RecordingPackager
    fuzzed: Room
    steady: RecordedBroadcast
    on_air: float


async def _start() -> Stage:
    packager = RecordingPackager()
    metrics = IngestMetrics()
    rooms = Rooms(packager, None, metrics)
    room, _ = await rooms.create("fuzzed")
    room.key_hash = hash_key(seeds.GOLDEN_KEY)  # mutants that keep the key reach publish
    server = RtmpServer(rooms, metrics, "127.0.0.1", 0, handshake_timeout=5, idle_timeout=5)
    await server.start()
    # Another room on air through it all: its program must keep real time.
    steady, _ = await rooms.create("steady")
    rooms.join(steady, "local", "test")
    return Stage(rooms, metrics, server, packager, room, packager.broadcasts[-1],
                 asyncio.get_running_loop().time())


async def _publish_tone(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
        "-i", "sine=frequency=2000:sample_rate=48000", "-t", "2.5", "-c:a", "aac",
        "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{seeds.GOLDEN_KEY}")
    return await asyncio.wait_for(proc.wait(), 20)


async def _stop(stage: Stage) -> None:
    await stage.server.stop()
    await stage.rooms.close()


def test_rtmp_server_survives_mutated_sessions_and_still_takes_a_publisher(
    loop_thread: LoopThread,
) -> None:
    stage = loop_thread.run(_start())
    port = stage.server.port
    last: deque[bytes] = deque(maxlen=REPLAY)

    def run(batch: Sequence[bytes]) -> None:
        closed = loop_thread.run(_throw(port, list(batch)), timeout=60)
        assert all(closed), [m[:80] for m, ok in zip(batch, closed, strict=True) if not ok]

    @fuzz_settings(ci=12, batch=BATCH)
    @given(st.lists(streams, min_size=BATCH, max_size=BATCH))
    def throw(batch: list[bytes]) -> None:
        count("rtmp.server", len(batch))
        run(batch)
        last.extend(batch)

    try:
        count("rtmp.server", len(CRAFTED))
        assert all(loop_thread.run(_throw(port, list(CRAFTED)), timeout=60))
        throw()
        growth = rss_growth_over(run, list(last), BATCH)
        assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth >> 20} MiB over a replay"
        text = stage.metrics.render().decode()
        assert 'kind="internal"' not in text, text
        assert 'outcome="internal"' not in text
        # The mutants reached every depth: refused keys, publishes, audio, limits.
        assert stage.metrics.rtmp_publishes._value.get() > 0
        assert stage.metrics.rtmp_errors.labels(kind="limit")._value.get() > 0
        assert stage.metrics.rtmp_errors.labels(kind="protocol")._value.get() > 0
        assert stage.server.connections == 0
        assert not stage.fuzzed.speakers, "a fuzzed publisher stayed in the room"
        elapsed = loop_thread.run(_elapsed(stage.on_air))
        assert abs(stage.steady.samples / 48_000 - elapsed) < 0.3

        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg CLI missing for the final real publisher")
        fuzzed = next(b for b in stage.packager.broadcasts if b.room == "fuzzed")
        before = len(fuzzed.blocks)
        assert loop_thread.run(_publish_tone(port), timeout=30) == 0
        heard = np.concatenate(fuzzed.blocks[before:], axis=1)[0]
        spec = np.abs(np.fft.rfft(heard))
        assert abs(np.argmax(spec) * 48_000 / len(heard) - 2000) < 5
    finally:
        loop_thread.run(_stop(stage))


async def _elapsed(since: float) -> float:
    return asyncio.get_running_loop().time() - since
