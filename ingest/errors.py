"""Errors raised by ingest, translated once at the boundary where they enter.

    IngestError
    ├── ConfigError            a setting that cannot work (checked at start)
    ├── Unavailable            a service ingest needs (the database) cannot be reached
    ├── RoomError
    │   ├── RoomNotFound       no such room (or no such speaker in it)
    │   ├── RoomExists         a waiting or live room already has that name
    │   ├── RoomEnded          the room is over; nothing can join it
    │   ├── RoomFull           too many speakers at once
    │   ├── RoomElsewhere      another node of the cluster publishes the room
    │   └── BadKey             a stream key that matches no room (or not this room)
    ├── ProtocolError          bytes from a publisher that break the RTMP rules
    │   ├── AmfError           AMF0 that cannot be decoded
    │   └── LimitExceeded      a chunk, message or count past our limits
    ├── MediaError
    │   ├── UnsupportedCodec   audio we do not decode (RTMP: not AAC; WHIP: not Opus)
    │   └── DecodeError        a packet the decoder rejected (PyAV errors map here)
    ├── SdpError               a WHIP offer that cannot be answered
    └── OverLimit              a request or connection refused by a limit (ingest.limits)
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error ingest raises on purpose."""


class ConfigError(IngestError):
    pass


class Unavailable(IngestError):
    pass


class RoomError(IngestError):
    pass


class RoomNotFound(RoomError):
    pass


class RoomExists(RoomError):
    pass


class RoomEnded(RoomError):
    pass


class RoomFull(RoomError):
    pass


class RoomElsewhere(RoomError):
    pass


class BadKey(RoomError):
    pass


class ProtocolError(IngestError):
    pass


class AmfError(ProtocolError):
    pass


class LimitExceeded(ProtocolError):
    pass


class MediaError(IngestError):
    pass


class UnsupportedCodec(MediaError):
    pass


class DecodeError(MediaError):
    pass


class SdpError(IngestError):
    pass


class OverLimit(IngestError):
    """A request or connection refused by a limit; `retry_after` seconds when waiting helps."""

    def __init__(self, message: str, limit: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after
