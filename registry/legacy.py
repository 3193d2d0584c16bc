"""The room file the ingest service kept before the registry: `{data_dir}/ingest/rooms.json`.

Format: `{"rooms": [{"name", "key_hash", "created_at", "state", "started_at", "ended_at",
"end_reason", "broadcast_id"}]}` with state "waiting" or "ended" (a live room was saved as
waiting). Rooms are read the way the ingest service read them: a waiting room comes back fresh,
without the times and broadcast of a previous run; an ended room keeps them. Pure parsing, no
I/O: `Registry.import_legacy` reads the file and stores the result.
"""

from __future__ import annotations

import json
from typing import Any

from registry.records import RoomRecord

LEGACY_FILE = "rooms.json"
IMPORTED_SUFFIX = ".imported"


def parse_rooms_json(text: str) -> list[RoomRecord]:
    """The rooms in a legacy file, in file order (last wins for a repeated name).

    Raises ValueError saying what is wrong and where.
    """
    data = json.loads(text)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("rooms"), list):
        raise ValueError('expected an object {"rooms": [...]}')
    found: dict[str, RoomRecord] = {}
    for i, item in enumerate(data["rooms"]):
        room = _room(item, f"rooms[{i}]")
        found.pop(room.name, None)
        found[room.name] = room
    return list(found.values())


def _room(item: Any, where: str) -> RoomRecord:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    name = _text(item, "name", where, required=True)
    key_hash = _text(item, "key_hash", where, required=True)
    assert name is not None and key_hash is not None
    if len(name) > 64 or len(key_hash) > 64:
        raise ValueError(f"{where}: name and key_hash must be at most 64 characters")
    created_at = _number(item, "created_at", where, required=True)
    assert created_at is not None
    state = item.get("state", "waiting")
    if state == "waiting":
        return RoomRecord(name, key_hash, "waiting", created_at, None, None, None, None, 0, 1)
    if state != "ended":
        raise ValueError(f"{where}: state {state!r} is neither 'waiting' nor 'ended'")
    return RoomRecord(
        name=name,
        key_hash=key_hash,
        state="ended",
        created_at=created_at,
        started_at=_number(item, "started_at", where),
        ended_at=_number(item, "ended_at", where),
        end_reason=_text(item, "end_reason", where),
        broadcast_id=_text(item, "broadcast_id", where),
        epoch=0,
        next_msn=1,
    )


def _text(item: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{where}.{key} must be a non-empty string, not {value!r}")
    return value


def _number(item: dict[str, Any], key: str, where: str, required: bool = False) -> float | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.{key} must be a number, not {value!r}")
    return float(value)
