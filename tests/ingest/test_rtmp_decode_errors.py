"""A publisher whose audio keeps failing to decode is told so and let go: AAC frames the
decoder rejects (decoded only when the program clock reaches them, `ingest.jitter`) and
audio messages that do not even parse."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from ingest.rtmp.chunk import ChunkDecoder, Message, encode_message
from ingest.rtmp.session import MAX_CONSECUTIVE_DECODE_ERRORS
from tests.fuzz import seeds
from tests.ingest.support import golden_key_server

AUDIO, SET_CHUNK_SIZE = 8, 1
FRAME_SECONDS = 1024 / 48_000


def _session_up_to_the_sequence_header() -> tuple[bytes, Message]:
    """ffmpeg 5.1's captured publish session as far as its AAC sequence header, in 128-byte
    chunks, and its first AAC frame (to copy the headers of)."""
    golden = seeds.rtmp_sessions()[0]
    out = bytearray(golden[: seeds.HANDSHAKE])
    audio = 0
    for msg in ChunkDecoder().feed(golden[seeds.HANDSHAKE :]):
        if msg.type_id == SET_CHUNK_SIZE:
            continue
        if msg.type_id == AUDIO:
            audio += 1
            if audio == 2:
                return bytes(out), msg
        out += encode_message(msg, 128)
    raise AssertionError("the captured session has no AAC frame")


@pytest.mark.parametrize("payload", [
    pytest.param(lambda tag: tag[:2] + bytes(300), id="aac-frames-the-decoder-rejects"),
    pytest.param(lambda tag: tag[:1], id="audio-tags-cut-short"),
])
async def test_a_publisher_whose_audio_never_decodes_is_refused_and_let_go(
        payload: Callable[[bytes], bytes]) -> None:
    async with golden_key_server("garbled") as (metrics, _, server):
        head, frame = _session_up_to_the_sequence_header()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        replies = bytearray()

        async def read_all() -> None:
            # The server's close ends it: EOF, or a reset when frames it never read were still
            # arriving (TCP's answer to closing on unread data).
            try:
                while data := await reader.read(65_536):
                    replies.extend(data)
            except ConnectionResetError:
                pass

        reading = asyncio.create_task(read_all())
        most = 4 * MAX_CONSECUTIVE_DECODE_ERRORS
        failed_after: int | None = None  # frames sent when the refusal came
        try:
            writer.write(head)
            sent = 0
            # Frames the decoder rejects, at the pace a publisher sends them, for as long as the
            # server keeps the connection (it lingers a second after refusing).
            while not reading.done() and sent < most:
                if failed_after is None and b"NetStream.Publish.Failed" in replies:
                    failed_after = sent
                garbage = Message(AUDIO, frame.stream_id, frame.timestamp + sent * 21,
                                  payload(frame.payload), frame.csid)
                try:
                    writer.write(encode_message(garbage, 128))
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                sent += 1
                await asyncio.sleep(FRAME_SECONDS)
            await asyncio.wait_for(reading, 10)
        finally:
            writer.close()
    assert b"NetStream.Publish.Start" in replies
    assert b"NetStream.Publish.Failed" in replies and b"audio does not decode" in replies
    # Refused once 50 in a row failed, within a part or two of the 50th; let go after.
    assert failed_after is not None
    assert MAX_CONSECUTIVE_DECODE_ERRORS <= failed_after <= 2 * MAX_CONSECUTIVE_DECODE_ERRORS
    assert sent < most
    sample = metrics.registry.get_sample_value
    assert (sample("townsquare_ingest_decode_errors_total") or 0) >= MAX_CONSECUTIVE_DECODE_ERRORS
    assert sample("townsquare_ingest_rtmp_connections_total",
                  {"outcome": "undecodable audio"}) == 1
