"""Thousands of malformed RTMP byte streams and SDP offers; the servers survive and still work.

Mutations start from real input (ffmpeg 5.1's publish session, aiortc's offer) so that they
reach deep states — a publish with a valid key, then a broken chunk — not only the first
byte check. Every RTMP connection must be closed by the server after the client's EOF, no
session may end in an internal error, and a real publisher must be accepted afterwards.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ingest.api import PublicUrls, build_app
from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.rtmp.chunk import ChunkHeader, Message, encode_message
from ingest.rtmp.messages import Command
from ingest.rtmp.server import RtmpServer
from ingest.stream_keys import hash_key
from ingest.whip import WhipEndpoint, allow_loopback_candidates
from tests.ingest.twins import RecordingPackager, ToneTrack, whip_offer

GOLDEN = Path(__file__).parent / "golden"
HANDSHAKE = 1 + 2 * 1536
GOLDEN_KEY = "tsk_golden-key"  # the key inside the captured session
RTMP_CASES = 3000
SDP_CASES = 2000


def rtmp_mutants(seed: int, count: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    sessions = [(GOLDEN / f).read_bytes() for f in
                ("ffmpeg51_publish_audio.bin", "ffmpeg51_publish_av.bin")]
    hs = sessions[0][:HANDSHAKE]
    crafted = [
        hs + bytes(ChunkHeader(0, 3, 0, 0xFFFFFF, 20, 0)),  # 16 MB command
        hs + encode_message(Message(1, 0, 0, struct.pack(">I", 0x7FFFFFFF), 2), 128),
        hs + encode_message(Message(1, 0, 0, b"\0\0\0\0", 2), 128),
        hs + encode_message(Message(20, 0, 0, b"\x03" + b"\x00\x01a\x03" * 100, 3), 128),
        hs + encode_message(Command("publish", 5.0, None, (GOLDEN_KEY,)).to_message(1), 128),
        hs + encode_message(Message(17, 0, 0, b"\x05garbage", 3), 128),
        hs + b"".join(bytes(ChunkHeader(0, 3 + i, 0, 300, 8, 1)) + bytes(128) for i in range(64)),
        b"\x06" + bytes(1536),  # RTMPE
        b"\x03" + bytes(100),  # truncated C1
        b"",
    ]
    for i in range(count):
        kind = i % 8
        base = rnd.choice(sessions)
        if kind == 0:
            yield base[: rnd.randrange(len(base))]
        elif kind in (1, 2):
            data = bytearray(base)
            for _ in range(rnd.randint(1, 12)):
                pos = rnd.randrange(HANDSHAKE, len(data))
                data[pos] = rnd.randrange(256)
            yield bytes(data)
        elif kind == 3:
            data = bytearray(base)
            pos = rnd.randrange(HANDSHAKE, len(data))
            data[pos:pos] = rnd.randbytes(rnd.randint(1, 64))
            yield bytes(data)
        elif kind == 4:
            data = bytearray(base)
            pos = rnd.randrange(HANDSHAKE, len(data) - 1)
            del data[pos : pos + rnd.randint(1, 200)]
            yield bytes(data)
        elif kind == 5:
            yield rnd.randbytes(rnd.randint(0, 5000))
        elif kind == 6:
            yield hs + rnd.randbytes(rnd.randint(1, 3000))
        else:
            yield crafted[i // 8 % len(crafted)]


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
            while await asyncio.wait_for(reader.read(65_536), 5.0):
                pass
        except (ConnectionError, OSError):
            pass
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_rtmp_server_survives_malformed_streams_and_still_takes_a_publisher(
    tmp_path: Path,
) -> None:
    packager = RecordingPackager()
    metrics = IngestMetrics()
    rooms = Rooms(packager, None, metrics)
    room, _ = await rooms.create("fuzzed")
    room.key_hash = hash_key(GOLDEN_KEY)  # mutants that keep the key reach publish and audio
    server = RtmpServer(rooms, metrics, "127.0.0.1", 0, handshake_timeout=5, idle_timeout=5)
    await server.start()
    # Another room on air through it all: its program must keep real time.
    steady, _ = await rooms.create("steady")
    rooms.join(steady, "local", "test")
    on_air = asyncio.get_running_loop().time()
    steady_broadcast = packager.broadcasts[-1]
    try:
        mutants = list(rtmp_mutants(20261123, RTMP_CASES))
        closed = 0
        for i in range(0, len(mutants), 25):
            results = await asyncio.gather(
                *(_send_and_wait_for_close(server.port, m) for m in mutants[i : i + 25]))
            closed += sum(results)
        assert closed == len(mutants), "some connections were left hanging"
        text = metrics.render().decode()
        assert 'kind="internal"' not in text, text
        # The mutants reached every depth: refused keys, publishes, audio, limits.
        assert metrics.rtmp_publishes._value.get() > 100
        assert metrics.rtmp_errors.labels(kind="limit")._value.get() > 0
        assert metrics.rtmp_errors.labels(kind="protocol")._value.get() > 100
        assert 'outcome="internal"' not in text
        assert server.connections == 0
        assert not room.speakers, "a fuzzed publisher stayed in the room"
        elapsed = asyncio.get_running_loop().time() - on_air
        assert abs(steady_broadcast.samples / 48_000 - elapsed) < 0.3

        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg CLI missing for the final real publisher")
        fuzzed = next(b for b in packager.broadcasts if b.room == "fuzzed")
        before = len(fuzzed.blocks)
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", "sine=frequency=2000:sample_rate=48000", "-t", "2.5", "-c:a", "aac",
            "-f", "flv", f"rtmp://127.0.0.1:{server.port}/live/{GOLDEN_KEY}")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        heard = np.concatenate(fuzzed.blocks[before:], axis=1)[0]
        spec = np.abs(np.fft.rfft(heard))
        assert abs(np.argmax(spec) * 48_000 / len(heard) - 2000) < 5
    finally:
        await server.stop()
        await rooms.close()


def sdp_mutants(offer: str, seed: int, count: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    lines = offer.split("\r\n")
    junk = ["a=rtpmap:111 opus/abc", "a=fingerprint:sha-256", "m=audio x UDP/TLS/RTP/SAVPF",
            "a=candidate:1 1 udp nope", "c=IN IP4", "a=ssrc:-1 cname:x", "a=rtcp-fb:",
            "a=setup:bogus", "a=mid:" + "x" * 5000, "m=audio 9 UDP/TLS/RTP/SAVPF 0 " + "1 " * 500,
            "a=group:BUNDLE 9 9 9", "a=extmap:99999 urn:x", "\x00\xff", "a=fmtp:111 =;=;="]
    for i in range(count):
        kind = i % 6
        ls = list(lines)
        if kind == 0:
            del ls[rnd.randrange(1, len(ls))]
        elif kind == 1:
            ls.insert(rnd.randrange(1, len(ls)), rnd.choice(junk))
        elif kind == 2:
            j = rnd.randrange(1, len(ls))
            ls[j] = ls[j][: rnd.randrange(len(ls[j]) + 1)]
        elif kind == 3:
            raw = bytearray("\r\n".join(ls).encode())
            for _ in range(rnd.randint(1, 8)):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            yield bytes(raw)
            continue
        elif kind == 4:
            yield rnd.randbytes(rnd.randint(0, 2000))
            continue
        else:
            j = rnd.randrange(1, len(ls))
            k, _, _ = ls[j].partition(":")
            ls[j] = k + ":" + rnd.choice(["", "-1", "999999999999", "x y z", "%s" * 10])
        yield "\r\n".join(ls).encode("utf-8", "surrogatepass")


async def test_whip_survives_malformed_offers_and_still_answers_a_good_one() -> None:
    allow_loopback_candidates(True)
    packager = RecordingPackager()
    metrics = IngestMetrics()
    rooms = Rooms(packager, None, metrics)
    whip = WhipEndpoint(rooms, metrics, connect_timeout=5)
    app = build_app(rooms, whip, metrics, "t" * 20,
                    PublicUrls("http://c", "rtmp://r", "http://e", "http://o"))
    _, key = await rooms.create("sdp")
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
    pc, offer = await whip_offer(ToneTrack(700))
    await pc.close()
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://c") as http:
        try:
            for body in sdp_mutants(offer, 7, SDP_CASES):
                r = await http.post("/whip/sdp", content=body, headers=headers)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert r.status_code in (201, 400, 406, 413), (r.status_code, r.text, body[:300])
                if r.status_code == 201:
                    await http.delete(r.headers["location"], headers=headers)
            assert statuses.get(400, 0) > SDP_CASES // 2, statuses
            assert statuses.get(201, 0) > 10, statuses  # mutants that aiortc still answered
            assert not whip.sessions
            good_pc, good = await whip_offer(ToneTrack(700))
            try:
                r = await http.post("/whip/sdp", content=good, headers=headers)
                assert r.status_code == 201, r.text
            finally:
                await good_pc.close()
        finally:
            await whip.close()
            await rooms.close()
