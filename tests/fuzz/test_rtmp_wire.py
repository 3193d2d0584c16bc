"""RTMP's pure parsers against mutated real input: the chunk stream, AMF0, FLV audio tags, the
handshake. Only ingest's own errors may come out, within a deadline and a memory bound; what
parses must mean the same however the bytes were cut, and re-encode to what was read.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ingest.errors import IngestError, ProtocolError
from ingest.rtmp import amf0, handshake
from ingest.rtmp.chunk import COMMAND_AMF0, COMMAND_AMF3, ChunkDecoder, Message
from ingest.rtmp.flv import AudioSpecificConfig, AudioTag
from ingest.rtmp.messages import Command
from tests.fuzz import seeds
from tests.fuzz.bounds import bounded
from tests.fuzz.mutate import bytes_or_mutant, mutated, split
from tests.fuzz.profiles import count, fuzz_settings

CHUNK_SEEDS = tuple(s[seeds.HANDSHAKE : seeds.HANDSHAKE + 6000] for s in seeds.rtmp_sessions())


def _decode(pieces: list[bytes]) -> tuple[list[Message], Exception | None]:
    decoder = ChunkDecoder()
    out: list[Message] = []
    try:
        for piece in pieces:
            out += decoder.feed(piece)
            # Buffered bytes never exceed what was fed: nothing is allocated on a promise.
            assert decoder.buffered <= sum(map(len, pieces))
    except ProtocolError as exc:
        return out, exc
    return out, None


@fuzz_settings(ci=300)
@given(st.data())
def test_chunk_stream_reassembles_the_same_however_cut(data: st.DataObject) -> None:
    stream = data.draw(bytes_or_mutant(CHUNK_SEEDS), label="stream")
    pieces = data.draw(split(stream), label="pieces")
    count("rtmp.chunk")
    with bounded(len(stream)):
        whole, whole_err = _decode([stream])
        cut, cut_err = _decode(pieces)
    # A feed that raises loses the messages of that call, so only clean runs compare.
    assert type(whole_err) is type(cut_err), (whole_err, cut_err)
    if whole_err is None:
        assert whole == cut


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)  # NaN is not equal to itself; its repr is


@fuzz_settings(ci=300)
@given(bytes_or_mutant(seeds.amf0_bodies()))
def test_amf0_decodes_or_refuses_and_round_trips(body: bytes) -> None:
    count("rtmp.amf0")
    with bounded(len(body)):
        try:
            values = amf0.decode_all(body)
        except ProtocolError:
            return
    assert _same(amf0.decode_all(amf0.encode(*values)), values)


amf_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=40) | st.just(amf0.UNDEFINED),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5).map(amf0.EcmaArray),
    max_leaves=30,
)


@fuzz_settings(ci=100)
@given(st.lists(amf_values, max_size=6))
def test_amf0_values_survive_encoding(values: list[Any]) -> None:
    count("rtmp.amf0-values")
    try:
        body = amf0.encode(*values)
    except ProtocolError:
        return  # nested deeper than MAX_DEPTH: refused on the way out too
    with bounded(len(body)):
        assert _same(amf0.decode_all(body), values)


@fuzz_settings(ci=300)
@given(bytes_or_mutant(seeds.amf0_bodies()), st.sampled_from((COMMAND_AMF0, COMMAND_AMF3)))
def test_commands_parse_or_refuse(body: bytes, type_id: int) -> None:
    count("rtmp.command")
    if type_id == COMMAND_AMF3:
        body = b"\0" + body
    with bounded(len(body)):
        try:
            cmd = Command.parse(Message(type_id, 1, 0, body))
        except ProtocolError:
            return
    assert isinstance(cmd.name, str) and isinstance(cmd.transaction_id, float)


@fuzz_settings(ci=300)
@given(bytes_or_mutant(seeds.audio_tags(), max_size=64))
@example(bytes([0xAF, 0x00, 0xF8, 0x00]))  # object type escape (31) with nothing after it
@example(bytes([0xAF, 0x00, 0x17, 0x80, 0x00, 0x00, 0x10]))  # explicit 24-bit rate
def test_audio_tags_parse_or_refuse(body: bytes) -> None:
    count("rtmp.flv")
    with bounded(len(body)):
        try:
            tag = AudioTag.parse(body)
            if tag.is_sequence_header:
                asc = AudioSpecificConfig.parse(tag.data)
                assert 7350 <= asc.sample_rate <= 96000 and 1 <= asc.channel_config <= 7
        except IngestError:
            return
    assert bytes(tag) == body


@fuzz_settings(ci=100)
@given(mutated([s[: seeds.HANDSHAKE] for s in seeds.rtmp_sessions()], max_edits=3))
def test_handshake_answers_or_refuses(hs: bytes) -> None:
    count("rtmp.handshake")
    with bounded(len(hs)):
        try:
            handshake.check_c0(hs[:1])
            reply = handshake.server_reply(hs[1:1537], 1234)
        except ProtocolError:
            return
    assert len(reply) == 1 + 2 * handshake.PACKET_SIZE
    assert reply[1 + 1536 + 8 :] == hs[9:1537]  # S2 echoes C1's random bytes
