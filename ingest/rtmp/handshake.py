"""The RTMP handshake (simple form): C0 C1 → S0 S1 S2 → C2.

C0/S0 is the version byte (3). C1/S1 are 1536 bytes: a 4-byte time, 4 bytes (zero in the
simple form, a version in the digest form), 1528 random bytes. S2 echoes C1 and C2 echoes
S1. ffmpeg, librtmp (OBS) and GStreamer publish after the simple handshake; only Flash
Player insisted on the digest form, so we answer every client the simple way.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ingest.errors import ProtocolError

VERSION = 3
PACKET_SIZE = 1536


@dataclass(frozen=True, slots=True)
class HandshakePacket:
    """C1/S1/C2/S2: time, a second 4-byte field, 1528 bytes of payload."""

    time: int
    time2: int
    random: bytes

    @classmethod
    def parse(cls, data: bytes) -> HandshakePacket:
        if len(data) != PACKET_SIZE:
            raise ProtocolError(f"handshake packet of {len(data)} bytes, not {PACKET_SIZE}")
        t1, t2 = struct.unpack(">II", data[:8])
        return cls(t1, t2, bytes(data[8:]))

    def __bytes__(self) -> bytes:
        return struct.pack(">II", self.time, self.time2) + self.random


def check_c0(c0: bytes) -> None:
    # Version 3 is plain RTMP; 6 is RTMPE (encrypted), which we do not speak.
    if len(c0) != 1 or c0[0] != VERSION:
        got = c0[0] if c0 else None
        raise ProtocolError(f"RTMP version {got!r} requested; only plain RTMP (3) is served")


def server_reply(c1: bytes, now_ms: int, rand: bytes | None = None) -> bytes:
    """S0 + S1 + S2 for a client's C1."""
    client = HandshakePacket.parse(c1)
    s1 = HandshakePacket(now_ms & 0xFFFFFFFF, 0, rand if rand is not None else os.urandom(1528))
    s2 = HandshakePacket(client.time, now_ms & 0xFFFFFFFF, client.random)
    return bytes([VERSION]) + bytes(s1) + bytes(s2)
