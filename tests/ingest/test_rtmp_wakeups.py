"""A publisher's audio costs the event loop one read a message, however the publisher splits
its writes (`ingest.rtmp.session.PUBLISHING_LOW_WATER`)."""

from __future__ import annotations

import asyncio

from ingest.rtmp.chunk import ChunkDecoder, ChunkHeader, Message, encode_message
from tests.fuzz import seeds
from tests.ingest.support import golden_key_server

AUDIO, SET_CHUNK_SIZE = 8, 1
FRAMES = 20
# ffmpeg writes a message's header, then its payload: here with time enough between them
# for a reader that wakes on any byte to read the header by itself.
HEADER_TO_PAYLOAD_SECONDS = 0.015
FRAME_SECONDS = 1024 / 48_000


def _captured_session() -> tuple[bytes, list[Message]]:
    """ffmpeg 5.1's captured publish session up to and with its AAC sequence header (in
    128-byte chunks), and its AAC frames."""
    golden = seeds.rtmp_sessions()[0]
    head = bytearray(golden[: seeds.HANDSHAKE])
    frames: list[Message] = []
    for msg in ChunkDecoder().feed(golden[seeds.HANDSHAKE :]):
        if msg.type_id == SET_CHUNK_SIZE:
            continue
        if msg.type_id == AUDIO and _is_frame(msg):
            frames.append(msg)
        elif not frames:
            head += encode_message(msg, 128)
    assert frames, "the captured session has no AAC frame"
    return bytes(head), frames


def _is_frame(msg: Message) -> bool:
    return len(msg.payload) > 1 and msg.payload[1] == 1  # AAC raw, not the sequence header


async def test_audio_messages_written_as_header_then_payload_cost_one_read_each() -> None:
    async with golden_key_server("split") as (metrics, room, server):
        head, frames = _captured_session()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        replies = bytearray()

        async def read_replies() -> None:
            while data := await reader.read(65_536):
                replies.extend(data)

        reading = asyncio.create_task(read_replies())

        def reads() -> float:
            return metrics.registry.get_sample_value("townsquare_ingest_rtmp_reads_total") or 0.0

        try:
            writer.write(head)
            for _ in range(250):
                if b"NetStream.Publish.Start" in replies:
                    break
                await asyncio.sleep(0.02)
            assert b"NetStream.Publish.Start" in replies
            await asyncio.sleep(0.1)  # whatever came with the publish has been read
            before = reads()
            for i in range(FRAMES):
                frame = frames[i % len(frames)]
                data = encode_message(Message(AUDIO, frame.stream_id, i * 21, frame.payload,
                                              frame.csid), 128)
                parsed = ChunkHeader.parse(data, 0, frozenset())
                assert parsed is not None
                header = parsed[1]  # where the first chunk's payload starts
                writer.write(data[:header])
                await writer.drain()
                await asyncio.sleep(HEADER_TO_PAYLOAD_SECONDS)
                writer.write(data[header:])
                await writer.drain()
                await asyncio.sleep(FRAME_SECONDS)
            await asyncio.sleep(0.1)
            got = reads() - before
            speaker = next(iter(room.speakers.values()))
            buffer = speaker.input.buffer
            # Waiting, buffered, or skipped as late by a program clock that ran behind on a
            # busy machine (then caught up): each way, the audio reached the buffer.
            heard = buffer.waiting + buffer.level + buffer.stats.dropped_samples
        finally:
            writer.close()
            reading.cancel()
    # One read a message (a read on a reader that wakes for any byte takes each header by
    # itself: twice as many).
    assert FRAMES - 2 <= got <= FRAMES + 2, f"{got:g} reads for {FRAMES} audio messages"
    assert heard, "the frames never reached the speaker's jitter buffer"
    assert b"NetStream.Publish.Failed" not in replies
