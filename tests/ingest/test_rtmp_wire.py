"""RTMP wire formats as pure values: golden bytes from ffmpeg 5.1, hand-made edge cases."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ingest.errors import AmfError, LimitExceeded, ProtocolError, UnsupportedCodec
from ingest.rtmp import amf0, handshake
from ingest.rtmp.chunk import (
    AUDIO,
    COMMAND_AMF0,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkDecoder,
    ChunkHeader,
    Limits,
    Message,
    encode_message,
)
from ingest.rtmp.flv import AudioSpecificConfig, AudioTag
from ingest.rtmp.messages import Command, on_status, set_chunk_size, status

GOLDEN = Path(__file__).parent / "golden"
HANDSHAKE = 1 + 2 * handshake.PACKET_SIZE  # C0 C1 C2


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


# --- golden: what ffmpeg 5.1 really sends -----------------------------------------------

def test_ffmpeg_publish_session_decodes_to_the_expected_commands() -> None:
    data = golden("ffmpeg51_publish_audio.bin")
    assert data[0] == handshake.VERSION
    msgs = ChunkDecoder().feed(data[HANDSHAKE:])
    commands = [Command.parse(m) for m in msgs if m.type_id == COMMAND_AMF0]
    assert [c.name for c in commands][:5] == [
        "connect", "releaseStream", "FCPublish", "createStream", "publish"]
    connect = commands[0]
    assert connect.transaction_id == 1.0
    assert connect.command_object["app"] == "live"
    assert connect.command_object["flashVer"].startswith("FMLE/3.0")
    assert commands[4].args == ("tsk_golden-key", "live")
    audio = [m for m in msgs if m.type_id == AUDIO]
    seq = AudioTag.parse(audio[0].payload)
    assert seq.is_sequence_header and seq.stereo
    asc = AudioSpecificConfig.parse(seq.data)
    assert (asc.object_type, asc.sample_rate, asc.channel_config) == (2, 48000, 2)
    frames = [AudioTag.parse(m.payload) for m in audio[1:]]
    assert all(not f.is_sequence_header for f in frames)
    # Timestamps follow AAC frames at 48 kHz: 1024 samples = 21.33 ms apart.
    stamps = [m.timestamp for m in audio[1:6]]
    assert stamps == [0, 21, 42, 64, 85]


def test_ffmpeg_session_decodes_the_same_fed_one_byte_at_a_time() -> None:
    data = golden("ffmpeg51_publish_av.bin")[HANDSHAKE:]
    whole = ChunkDecoder().feed(data)
    dec = ChunkDecoder()
    trickled = [m for i in range(len(data)) for m in dec.feed(data[i : i + 1])]
    assert trickled == whole
    assert dec.chunk_size == 4096  # ffmpeg's Set Chunk Size took effect mid-stream


def test_video_messages_are_skipped_without_being_buffered() -> None:
    msgs = ChunkDecoder().feed(golden("ffmpeg51_publish_av.bin")[HANDSHAKE:])
    video = [m for m in msgs if m.type_id == VIDEO]
    assert video and all(m.payload == b"" for m in video)
    assert sum(m.type_id == AUDIO for m in msgs) == 26


def test_decoded_messages_reencode_and_decode_identically() -> None:
    msgs = ChunkDecoder().feed(golden("ffmpeg51_publish_audio.bin")[HANDSHAKE:])
    for size in (128, 4096):
        dec = ChunkDecoder()
        dec.chunk_size = size
        again = [m2 for m in msgs if m.type_id != SET_CHUNK_SIZE
                 for m2 in dec.feed(encode_message(m, size))]
        assert again == [m for m in msgs if m.type_id != SET_CHUNK_SIZE]


# --- chunk headers --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "raw"),
    [
        (ChunkHeader(0, 3, 1000, 140, 20, 0), bytes.fromhex("03 0003e8 00008c 14 00000000")),
        (ChunkHeader(1, 4, 21, 232, 8), bytes.fromhex("44 000015 0000e8 08")),
        (ChunkHeader(2, 4, 21), bytes.fromhex("84 000015")),
        (ChunkHeader(3, 4), bytes.fromhex("c4")),
        (ChunkHeader(0, 64, 0, 4, 1, 0), bytes.fromhex("00 00 000000 000004 01 00000000")),
        (ChunkHeader(3, 400), bytes.fromhex("c1 5001")),
        (ChunkHeader(0, 5, 0x01000000, 7, 8, 1, True),
         bytes.fromhex("05 ffffff 000007 08 01000000 01000000")),
    ],
)
def test_chunk_header_golden_bytes(header: ChunkHeader, raw: bytes) -> None:
    assert bytes(header) == raw
    parsed = ChunkHeader.parse(raw, 0, set())
    assert parsed == (header, len(raw))


def test_chunk_header_parse_says_none_until_complete() -> None:
    raw = bytes(ChunkHeader(0, 3, 1000, 140, 20, 0))
    assert all(ChunkHeader.parse(raw[:i], 0, set()) is None for i in range(len(raw)))


def test_extended_timestamp_repeats_on_format_3_continuations() -> None:
    msg = Message(AUDIO, 1, 0x01234567, bytes(300), csid=4)
    raw = encode_message(msg, 128)
    # 12 + 4 header, then two continuations of 1 + 4 bytes.
    assert len(raw) == 16 + 300 + 2 * 5
    assert ChunkDecoder().feed(raw) == [msg]


def test_formats_1_to_3_carry_deltas_from_the_previous_header() -> None:
    raw = (bytes(ChunkHeader(0, 4, 100, 2, AUDIO, 1)) + b"\xaf\x01"
           + bytes(ChunkHeader(2, 4, 21)) + b"\xaf\x01"
           + bytes(ChunkHeader(3, 4)) + b"\xaf\x01"
           + bytes(ChunkHeader(1, 4, 22, 3, AUDIO)) + b"\xaf\x01\x00")
    stamps = [m.timestamp for m in ChunkDecoder().feed(raw)]
    assert stamps == [100, 121, 142, 164]


def test_chunk_stream_must_start_with_a_full_header() -> None:
    with pytest.raises(ProtocolError):
        ChunkDecoder().feed(bytes(ChunkHeader(1, 4, 21, 2, AUDIO)) + b"\xaf\x01")


def test_oversized_message_and_chunk_size_are_refused() -> None:
    dec = ChunkDecoder(Limits(max_message_size=1000))
    with pytest.raises(LimitExceeded):
        dec.feed(bytes(ChunkHeader(0, 3, 0, 5000, COMMAND_AMF0, 0)))
    with pytest.raises(LimitExceeded):
        ChunkDecoder().feed(encode_message(set_chunk_size(1 << 24), 128))
    with pytest.raises(ProtocolError):
        ChunkDecoder().feed(encode_message(Message(SET_CHUNK_SIZE, 0, 0, b"\0\0\0\0", 2), 128))


def test_too_many_chunk_streams_are_refused() -> None:
    # Each stream gets the first 128-byte chunk of a 200-byte message: all left open.
    raw = b"".join(bytes(ChunkHeader(0, 3 + i, 0, 200, AUDIO, 1)) + bytes(128) for i in range(40))
    with pytest.raises(LimitExceeded):
        ChunkDecoder(Limits(max_chunk_streams=32)).feed(raw)


def test_a_large_video_message_costs_no_memory() -> None:
    size = 8_000_000
    dec = ChunkDecoder()
    dec.feed(encode_message(set_chunk_size(65_536), 128))
    dec.chunk_size = 65_536
    raw = encode_message(Message(VIDEO, 1, 0, bytes(size), csid=6), 65_536)
    peak = 0
    out = []
    for i in range(0, len(raw), 50_000):
        out += dec.feed(raw[i : i + 50_000])
        peak = max(peak, dec.buffered)
    assert [m.payload for m in out] == [b""]
    assert peak < 200_000


# --- handshake ------------------------------------------------------------------------

def test_handshake_reply_echoes_c1_in_s2() -> None:
    c1 = struct.pack(">II", 1234, 0) + bytes(range(256)) * 5 + bytes(248)
    reply = handshake.server_reply(c1, now_ms=99, rand=bytes(1528))
    assert len(reply) == 1 + 2 * handshake.PACKET_SIZE
    assert reply[0] == 3
    s1 = handshake.HandshakePacket.parse(reply[1:1537])
    s2 = handshake.HandshakePacket.parse(reply[1537:])
    assert (s1.time, s1.time2, s1.random) == (99, 0, bytes(1528))
    assert (s2.time, s2.time2, s2.random) == (1234, 99, c1[8:])


def test_handshake_refuses_rtmpe_and_short_packets() -> None:
    with pytest.raises(ProtocolError):
        handshake.check_c0(b"\x06")
    with pytest.raises(ProtocolError):
        handshake.server_reply(bytes(100), 0)


# --- AMF0 -----------------------------------------------------------------------------

def test_amf0_golden_connect_result() -> None:
    raw = amf0.encode("_result", 1.0, {"fmsVer": "FMS/3"}, None, amf0.UNDEFINED)
    assert raw == bytes.fromhex(
        "0200075f726573756c74" "003ff0000000000000"
        "03" "0006666d7356657202000546 4d532f33".replace(" ", "") + "000009" "05" "06")
    assert amf0.decode_all(raw) == ["_result", 1.0, {"fmsVer": "FMS/3"}, None, amf0.UNDEFINED]


def test_amf0_round_trips_every_supported_type() -> None:
    values = [1.5, True, False, "héllo", "x" * 70_000, None, amf0.UNDEFINED,
              {"a": 1.0, "b": {"c": [1.0, "two", None]}}, amf0.EcmaArray(duration=0.0)]
    decoded = amf0.decode_all(amf0.encode(*values))
    assert decoded == values
    assert isinstance(decoded[-1], amf0.EcmaArray)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02\x00\x05ab",  # string shorter than its length
        b"\x00\x3f",  # truncated number
        b"\x03\x00\x01a",  # object without a value or end
        b"\x07\x00\x01",  # reference: refused
        b"\x11\x00",  # AMF3 switch: refused
        b"\x0a\xff\xff\xff\xff",  # strict array claiming 4 billion items
        b"\x02\x00\x02\xff\xfe",  # not UTF-8
        b"\x03" + b"\x00\x01a\x03" * 50,  # nesting bomb
    ],
)
def test_amf0_rejects_malformed_values(raw: bytes) -> None:
    with pytest.raises(AmfError):
        amf0.decode_all(raw)


def test_on_status_message_decodes_as_a_command() -> None:
    msg = on_status(1, status("NetStream.Publish.BadName", "invalid stream key", "error"))
    cmd = Command.parse(msg)
    assert (cmd.name, msg.stream_id) == ("onStatus", 1)
    assert cmd.args[0]["code"] == "NetStream.Publish.BadName"
    assert cmd.args[0]["level"] == "error"


# --- FLV audio ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1210", (2, 44100, 2)),
        ("1190", (2, 48000, 2)),
        ("1188", (2, 48000, 1)),
        ("120856e500", (2, 44100, 1)),  # PyAV's encoder, with a sync extension
        ("2b920800", (5, 22050, 2)),  # HE-AAC: the core rate; SBR doubles it
    ],
)
def test_audio_specific_config_golden(raw: str, expected: tuple[int, int, int]) -> None:
    asc = AudioSpecificConfig.parse(bytes.fromhex(raw))
    assert (asc.object_type, asc.sample_rate, asc.channel_config) == expected


def test_non_aac_audio_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedCodec, match="MP3"):
        AudioTag.parse(b"\x2f\xff\xfb")
    with pytest.raises(UnsupportedCodec, match="enhanced RTMP"):
        AudioTag.parse(b"\x90Opus")
    with pytest.raises(ProtocolError):
        AudioTag.parse(b"\xaf\x07")
    with pytest.raises(ProtocolError):
        AudioSpecificConfig.parse(b"\x17")  # sampling index 14 is reserved... and short


def test_audio_tag_round_trip() -> None:
    tag = AudioTag(10, 3, True, True, 1, b"\x21\x00")
    assert bytes(tag) == b"\xaf\x01\x21\x00"
    assert AudioTag.parse(bytes(tag)) == tag
