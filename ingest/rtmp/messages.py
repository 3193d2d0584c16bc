"""RTMP protocol control, user control and command messages as values."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ingest.errors import ProtocolError
from ingest.rtmp import amf0
from ingest.rtmp.chunk import (
    ACKNOWLEDGEMENT,
    COMMAND_AMF0,
    COMMAND_AMF3,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    WINDOW_ACK_SIZE,
    Message,
)

# Chunk stream ids by convention (ffmpeg, nginx-rtmp): 2 for control, 3 for commands.
CONTROL_CSID, COMMAND_CSID, STATUS_CSID = 2, 3, 5
STREAM_BEGIN = 0
PEER_BANDWIDTH_DYNAMIC = 2


def set_chunk_size(size: int) -> Message:
    return Message(SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size), CONTROL_CSID)


def window_ack_size(size: int) -> Message:
    return Message(WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", size), CONTROL_CSID)


def set_peer_bandwidth(size: int, limit_type: int = PEER_BANDWIDTH_DYNAMIC) -> Message:
    return Message(SET_PEER_BANDWIDTH, 0, 0, struct.pack(">IB", size, limit_type), CONTROL_CSID)


def acknowledgement(sequence: int) -> Message:
    return Message(ACKNOWLEDGEMENT, 0, 0, struct.pack(">I", sequence & 0xFFFFFFFF), CONTROL_CSID)


def stream_begin(stream_id: int) -> Message:
    return Message(USER_CONTROL, 0, 0, struct.pack(">HI", STREAM_BEGIN, stream_id), CONTROL_CSID)


@dataclass(frozen=True, slots=True)
class Command:
    """An AMF0 command: name, transaction id, command object, further arguments."""

    name: str
    transaction_id: float
    command_object: Any = None
    args: tuple[Any, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, msg: Message) -> Command:
        payload = msg.payload
        if msg.type_id == COMMAND_AMF3:
            # An AMF3 command message starts with a format byte, then AMF0 in practice.
            if not payload or payload[0] != 0:
                raise ProtocolError("AMF3 command without the AMF0 escape byte")
            payload = payload[1:]
        elif msg.type_id != COMMAND_AMF0:
            raise ProtocolError(f"message type {msg.type_id} is not a command")
        values = amf0.decode_all(payload)
        if len(values) < 2 or not isinstance(values[0], str):
            raise ProtocolError("command message without a name and transaction id")
        txn = values[1]
        if not isinstance(txn, float):
            raise ProtocolError(f"command {values[0]!r} with a non-number transaction id")
        obj = values[2] if len(values) > 2 else None
        return cls(values[0], txn, obj, tuple(values[3:]))

    def to_message(self, stream_id: int = 0, csid: int = COMMAND_CSID) -> Message:
        body = amf0.encode(self.name, self.transaction_id, self.command_object, *self.args)
        return Message(COMMAND_AMF0, stream_id, 0, body, csid)


def status(code: str, description: str, level: str = "status", **extra: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description, **extra}


def on_status(stream_id: int, info: dict[str, Any]) -> Message:
    return Command("onStatus", 0.0, None, (info,)).to_message(stream_id, STATUS_CSID)
