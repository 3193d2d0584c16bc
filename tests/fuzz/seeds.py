"""Real inputs the mutations start from, so that they reach deep states, not the first check.

- RTMP: two sessions ffmpeg 5.1 really published (handshake, connect, publish with a key, AAC
  with and without video), and the messages, AMF0 bodies and audio tags inside them.
- SDP: the offer a real aiortc publisher makes.
- HLS: playlists the packager wrote, and object paths named by `hls.names` itself.
"""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

from hls.names import epoch_id, index_name, part_name, segment_name
from ingest.rtmp.chunk import AUDIO, COMMAND_AMF0, DATA_AMF0, ChunkDecoder, Message

INGEST_GOLDEN = Path(__file__).parent.parent / "ingest" / "golden"
PACKAGER_GOLDEN = Path(__file__).parent.parent / "packager" / "golden"
HANDSHAKE = 1 + 2 * 1536
GOLDEN_KEY = "tsk_golden-key"  # the stream key inside the captured sessions


@cache
def rtmp_sessions() -> tuple[bytes, ...]:
    return tuple((INGEST_GOLDEN / f).read_bytes()
                 for f in ("ffmpeg51_publish_audio.bin", "ffmpeg51_publish_av.bin"))


@cache
def rtmp_messages() -> tuple[Message, ...]:
    out: list[Message] = []
    for session in rtmp_sessions():
        out += ChunkDecoder().feed(session[HANDSHAKE:])
    return tuple(out)


def payloads(*types: int) -> tuple[bytes, ...]:
    return tuple(m.payload for m in rtmp_messages() if m.type_id in types and m.payload)


def amf0_bodies() -> tuple[bytes, ...]:
    return payloads(COMMAND_AMF0, DATA_AMF0)


def audio_tags() -> tuple[bytes, ...]:
    # The sequence header first and a handful of frames are enough to cover every branch.
    return payloads(AUDIO)[:12]


@cache
def aiortc_offer() -> str:
    from tests.ingest.twins import ToneTrack, whip_offer

    async def make() -> str:
        pc, sdp = await whip_offer(ToneTrack(700))
        await pc.close()
        return sdp

    return asyncio.run(make())


@cache
def playlists() -> tuple[bytes, ...]:
    return tuple((PACKAGER_GOLDEN / f).read_bytes()
                 for f in ("live.m3u8", "delta.m3u8", "master.m3u8"))


ROOM = "fuzzroom"
RENDITIONS = ("aac96", "aac48")
BROADCAST = "b20260921T141320Z-a1b2c3"
EPOCH = epoch_id(3, BROADCAST)


def object_paths(room: str = ROOM) -> tuple[str, ...]:
    """Paths below `/live/` of every kind of object, as the packager names them."""
    rend = RENDITIONS[0]
    return (
        f"{room}/master.m3u8", f"{room}/room.json", f"{room}/state.json",
        f"{room}/{rend}/live.m3u8", f"{room}/{rend}/{EPOCH}/init.mp4",
        f"{room}/{rend}/{EPOCH}/{part_name(4, 2)}", f"{room}/{rend}/{EPOCH}/{segment_name(3)}",
        f"{room}/{rend}/{EPOCH}/{index_name(0)}", f"{room}/{BROADCAST}/epochs.json",
        f"{room}/{BROADCAST}/recording.m3u8", f"{room}/{BROADCAST}/{rend}/recording.m3u8",
        f"{room}/status.json", "rooms.json",
    )


QUERIES = ("", "_HLS_msn=3", "_HLS_msn=3&_HLS_part=2", "_HLS_msn=4&_HLS_part=1&_HLS_skip=YES",
           "_HLS_skip=v2", "_HLS_part=1&_HLS_msn=2", "foo=bar&_HLS_msn=1", "_HLS_msn=1&_HLS_msn=1")
