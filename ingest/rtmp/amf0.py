"""AMF0 values (the encoding of RTMP commands and metadata): pure decode and encode.

Python values stand for AMF0 types: float (number; ints are written as numbers), bool,
str (string or long string), dict (object), EcmaArray (ECMA array), list (strict array),
None (null) and UNDEFINED. Dates decode to their millisecond number. References, XML,
typed objects and the AMF3 switch are refused: no publisher needs them for a command, and
each is a way to make a decoder do unbounded work.
"""

from __future__ import annotations

import struct
from typing import Any

from ingest.errors import AmfError

NUMBER, BOOLEAN, STRING, OBJECT = 0x00, 0x01, 0x02, 0x03
NULL, UNDEFINED_MARKER, ECMA_ARRAY, OBJECT_END = 0x05, 0x06, 0x08, 0x09
STRICT_ARRAY, DATE, LONG_STRING = 0x0A, 0x0B, 0x0C

# Commands nest an object or two; metadata one more. Deeper input is hostile.
MAX_DEPTH = 8
MAX_ITEMS = 1024


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:  # noqa: PYI034 - a singleton
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


class EcmaArray(dict[str, Any]):
    """An associative array (onMetaData uses one); behaves as a dict."""


def decode_all(data: bytes) -> list[Any]:
    """Decode every value in `data` (a command message body)."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = decode(data, pos)
        out.append(value)
        if len(out) > MAX_ITEMS:
            raise AmfError("too many AMF0 values in one message")
    return out


def decode(data: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """Decode one value at `pos`; return it and the position after it."""
    if depth > MAX_DEPTH:
        raise AmfError("AMF0 nesting too deep")
    marker = _take(data, pos, 1)[0]
    pos += 1
    if marker == NUMBER:
        return struct.unpack(">d", _take(data, pos, 8))[0], pos + 8
    if marker == BOOLEAN:
        return _take(data, pos, 1)[0] != 0, pos + 1
    if marker == STRING:
        return _short_string(data, pos)
    if marker == LONG_STRING:
        (n,) = struct.unpack(">I", _take(data, pos, 4))
        return _text(_take(data, pos + 4, n)), pos + 4 + n
    if marker == NULL:
        return None, pos
    if marker == UNDEFINED_MARKER:
        return UNDEFINED, pos
    if marker == OBJECT:
        obj: dict[str, Any] = {}
        return obj, _properties(data, pos, depth, obj)
    if marker == ECMA_ARRAY:
        _take(data, pos, 4)  # the count is a hint only; the end marker is authoritative
        arr = EcmaArray()
        return arr, _properties(data, pos + 4, depth, arr)
    if marker == STRICT_ARRAY:
        (n,) = struct.unpack(">I", _take(data, pos, 4))
        if n > MAX_ITEMS:
            raise AmfError(f"AMF0 strict array of {n} items")
        pos += 4
        items = []
        for _ in range(n):
            item, pos = decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        (ms,) = struct.unpack(">d", _take(data, pos, 8))
        _take(data, pos + 8, 2)  # time zone, unused by the format since its birth
        return ms, pos + 10
    raise AmfError(f"unsupported AMF0 marker 0x{marker:02x}")


def encode(*values: Any) -> bytes:
    return b"".join(_encode_one(v, 0) for v in values)


def _encode_one(value: Any, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise AmfError("AMF0 nesting too deep")
    if value is None:
        return bytes([NULL])
    if value is UNDEFINED:
        return bytes([UNDEFINED_MARKER])
    if isinstance(value, bool):
        return bytes([BOOLEAN, 1 if value else 0])
    if isinstance(value, (int, float)):
        return bytes([NUMBER]) + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            return bytes([STRING]) + struct.pack(">H", len(raw)) + raw
        return bytes([LONG_STRING]) + struct.pack(">I", len(raw)) + raw
    if isinstance(value, EcmaArray):
        return bytes([ECMA_ARRAY]) + struct.pack(">I", len(value)) + _encode_props(value, depth)
    if isinstance(value, dict):
        return bytes([OBJECT]) + _encode_props(value, depth)
    if isinstance(value, (list, tuple)):
        body = b"".join(_encode_one(v, depth + 1) for v in value)
        return bytes([STRICT_ARRAY]) + struct.pack(">I", len(value)) + body
    raise AmfError(f"cannot encode {type(value).__name__} as AMF0")


def _encode_props(props: dict[str, Any], depth: int) -> bytes:
    parts = []
    for key, val in props.items():
        raw = key.encode("utf-8")
        parts.append(struct.pack(">H", len(raw)) + raw + _encode_one(val, depth + 1))
    return b"".join(parts) + b"\x00\x00" + bytes([OBJECT_END])


def _properties(data: bytes, pos: int, depth: int, into: dict[str, Any]) -> int:
    while True:
        if len(into) > MAX_ITEMS:
            raise AmfError("AMF0 object with too many properties")
        key, pos = _short_string(data, pos)
        if key == "" and _take(data, pos, 1)[0] == OBJECT_END:
            return pos + 1
        into[key], pos = decode(data, pos, depth + 1)


def _short_string(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack(">H", _take(data, pos, 2))
    return _text(_take(data, pos + 2, n)), pos + 2 + n


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AmfError("AMF0 string is not UTF-8") from exc


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise AmfError("AMF0 value truncated")
    return data[pos : pos + n]
