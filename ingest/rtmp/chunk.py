"""The RTMP chunk stream: headers as values, a sans-I/O decoder that reassembles messages.

A message travels as chunks of at most `chunk_size` bytes (128 until the peer sends Set
Chunk Size). Each chunk starts with a basic header (format 0–3 and a chunk stream id) and a
message header that repeats less of the previous one the higher the format (11, 7, 3 or 0
bytes); a 24-bit timestamp of 0xFFFFFF means a 32-bit extended timestamp follows, and
format-3 chunks repeat it when their stream's last header carried one (what ffmpeg and
librtmp do).

The decoder never holds more than it must: chunk size, message size and the number of chunk
streams are bounded, and video messages (which we ignore) are skipped as they pass instead
of being buffered, so a 2 MB keyframe costs nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ingest.errors import LimitExceeded, ProtocolError

EXTENDED = 0xFFFFFF
DEFAULT_CHUNK_SIZE = 128
# The longest chunk header: a 3-byte basic header, a format-0 message header and an
# extended timestamp.
MAX_CHUNK_HEADER = 3 + 11 + 4

SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL = 1, 2, 3, 4
WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 5, 6
AUDIO, VIDEO = 8, 9
DATA_AMF3, SHARED_OBJECT_AMF3, COMMAND_AMF3 = 15, 16, 17
DATA_AMF0, SHARED_OBJECT_AMF0, COMMAND_AMF0, AGGREGATE = 18, 19, 20, 22

# Messages we act on are kept whole; anything else is counted past without storage.
BUFFERED_TYPES = frozenset(
    {SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH,
     AUDIO, DATA_AMF0, COMMAND_AMF0, COMMAND_AMF3, DATA_AMF3}
)


@dataclass(frozen=True, slots=True)
class Limits:
    # ffmpeg and OBS send 4096-byte chunks; 64 KiB leaves room and bounds one read.
    max_chunk_size: int = 65_536
    # Commands, metadata and AAC frames are a few KB; 256 KiB is generous and bounded.
    max_message_size: int = 262_144
    # A publisher uses 3–6 chunk streams; each open one can hold a partial message.
    max_chunk_streams: int = 32


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """One chunk's header as sent; fields a format omits are None."""

    fmt: int
    csid: int
    timestamp: int | None = None  # absolute for fmt 0, a delta for fmt 1 and 2
    length: int | None = None
    type_id: int | None = None
    stream_id: int | None = None
    extended: bool = False  # the timestamp was carried in the extended field

    @classmethod
    def parse(
        cls, data: bytes | bytearray | memoryview, pos: int, fmt3_extended: frozenset[int] | set[int]
    ) -> tuple[ChunkHeader, int] | None:
        """Parse a header at `pos`; None when `data` ends before it does.

        `fmt3_extended` names the chunk streams whose last header had an extended
        timestamp: a format-3 chunk on those carries one too.
        """
        end = len(data)
        if pos >= end:
            return None
        b0 = data[pos]
        fmt, csid = b0 >> 6, b0 & 0x3F
        pos += 1
        if csid == 0:
            if pos + 1 > end:
                return None
            csid = 64 + data[pos]
            pos += 1
        elif csid == 1:
            if pos + 2 > end:
                return None
            csid = 64 + data[pos] + (data[pos + 1] << 8)
            pos += 2
        size = (11, 7, 3, 0)[fmt]
        if pos + size > end:
            return None
        ts = length = type_id = stream_id = None
        if fmt <= 2:
            ts = int.from_bytes(data[pos : pos + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(data[pos + 3 : pos + 6], "big")
            type_id = data[pos + 6]
        if fmt == 0:
            stream_id = int.from_bytes(data[pos + 7 : pos + 11], "little")
        pos += size
        extended = ts == EXTENDED or (fmt == 3 and csid in fmt3_extended)
        if extended:
            if pos + 4 > end:
                return None
            ext = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
            if fmt != 3:
                ts = ext
        return cls(fmt, csid, ts, length, type_id, stream_id, extended), pos

    def __bytes__(self) -> bytes:
        if self.csid < 2 or self.csid > 65_599:
            raise ValueError(f"chunk stream id {self.csid} out of range 2..65599")
        if self.csid < 64:
            out = bytearray([(self.fmt << 6) | self.csid])
        elif self.csid < 320:
            out = bytearray([self.fmt << 6, self.csid - 64])
        else:
            out = bytearray([(self.fmt << 6) | 1]) + struct.pack("<H", self.csid - 64)
        ts = self.timestamp or 0
        extended = self.extended or ts >= EXTENDED
        if self.fmt <= 2:
            out += (EXTENDED if extended else ts).to_bytes(3, "big")
        if self.fmt <= 1:
            out += (self.length or 0).to_bytes(3, "big") + bytes([self.type_id or 0])
        if self.fmt == 0:
            out += (self.stream_id or 0).to_bytes(4, "little")
        if extended:
            out += ts.to_bytes(4, "big")
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    csid: int = 3


@dataclass(slots=True)
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    received: int = 0  # bytes of the current message so far
    payload: bytearray = field(default_factory=bytearray)
    started: bool = False  # a header has set this stream's fields at least once


class ChunkDecoder:
    """Feed bytes in, get whole messages out. Raises ProtocolError on broken input."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._fmt3_extended: set[int] = set()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        pos = 0
        while True:
            step = self._chunk(pos, out)
            if step is None:
                break
            pos = step
        del self._buf[:pos]
        return out

    def _chunk(self, pos: int, out: list[Message]) -> int | None:
        parsed = ChunkHeader.parse(self._buf, pos, self._fmt3_extended)
        if parsed is None:
            return None
        hdr, body = parsed
        cs = self._streams.get(hdr.csid)
        if cs is None:
            if len(self._streams) >= self.limits.max_chunk_streams:
                raise LimitExceeded(f"more than {self.limits.max_chunk_streams} chunk streams")
            if hdr.fmt != 0:
                raise ProtocolError(f"chunk stream {hdr.csid} starts with format {hdr.fmt}")
            cs = _ChunkStream()
        in_message = cs.received > 0
        if in_message and hdr.fmt != 3:
            raise ProtocolError(f"chunk stream {hdr.csid}: new header inside a message")
        # Work out what this chunk means before touching the stream, so that a header
        # whose body has not arrived yet can be parsed again unchanged.
        length, type_id = cs.length, cs.type_id
        if hdr.fmt <= 1:
            assert hdr.length is not None and hdr.type_id is not None
            length, type_id = hdr.length, hdr.type_id
        if not in_message:
            limit = self.limits.max_message_size
            if type_id in BUFFERED_TYPES and length > limit:
                raise LimitExceeded(f"message of {length} bytes (type {type_id}) over {limit}")
        take = min(self.chunk_size, length - cs.received) if length else 0
        if body + take > len(self._buf):
            return None
        self._streams[hdr.csid] = cs
        if hdr.fmt == 0:
            assert hdr.timestamp is not None
            cs.timestamp, cs.delta, cs.stream_id = hdr.timestamp, 0, hdr.stream_id or 0
        elif hdr.fmt in (1, 2):
            assert hdr.timestamp is not None
            cs.delta = hdr.timestamp
            cs.timestamp = (cs.timestamp + cs.delta) & 0xFFFFFFFF
        elif not in_message:
            cs.timestamp = (cs.timestamp + cs.delta) & 0xFFFFFFFF
        if hdr.fmt != 3:
            cs.extended = hdr.extended
            if hdr.extended:
                self._fmt3_extended.add(hdr.csid)
            else:
                self._fmt3_extended.discard(hdr.csid)
        cs.length, cs.type_id, cs.started = length, type_id, True
        if type_id in BUFFERED_TYPES:
            cs.payload += self._buf[body : body + take]
        cs.received += take
        if cs.received >= cs.length:
            msg = Message(cs.type_id, cs.stream_id, cs.timestamp, bytes(cs.payload), hdr.csid)
            cs.payload.clear()
            cs.received = 0
            self._control(msg)
            out.append(msg)
        return body + take

    def _control(self, msg: Message) -> None:
        """Protocol control that changes how the following bytes are read."""
        if msg.type_id == SET_CHUNK_SIZE:
            if len(msg.payload) < 4:
                raise ProtocolError("Set Chunk Size shorter than 4 bytes")
            size = int.from_bytes(msg.payload[:4], "big") & 0x7FFFFFFF
            if size < 1:
                raise ProtocolError("Set Chunk Size of 0")
            if size > self.limits.max_chunk_size:
                raise LimitExceeded(f"chunk size {size} over {self.limits.max_chunk_size}")
            self.chunk_size = size
        elif msg.type_id == ABORT and len(msg.payload) >= 4:
            csid = int.from_bytes(msg.payload[:4], "big")
            cs = self._streams.get(csid)
            if cs is not None:
                cs.payload.clear()
                cs.received = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) + sum(len(s.payload) for s in self._streams.values())


def encode_message(msg: Message, chunk_size: int) -> bytes:
    """Chunk one message: a format-0 header, then format-3 continuations."""
    out = bytearray()
    extended = msg.timestamp >= EXTENDED
    first = ChunkHeader(0, msg.csid, msg.timestamp, len(msg.payload), msg.type_id,
                        msg.stream_id, extended)
    out += bytes(first)
    cont = bytes(ChunkHeader(3, msg.csid, msg.timestamp if extended else None, extended=extended))
    payload = msg.payload
    for off in range(0, max(len(payload), 1), chunk_size):
        if off:
            out += cont
        out += payload[off : off + chunk_size]
    return bytes(out)
