"""The old `rooms.json`: imported once, then renamed; a broken one is reported, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import Registry, RegistryError
from registry.legacy import parse_rooms_json

HASH = "c" * 64


def legacy_file(folder: Path, rooms: list[dict[str, object]]) -> Path:
    path = folder / "ingest" / "rooms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rooms": rooms}, indent=1))
    return path


WAITING = {
    "name": "morning", "key_hash": HASH, "created_at": 100.0, "state": "waiting",
    "started_at": 110.0, "ended_at": None, "end_reason": None, "broadcast_id": "old-b",
}
ENDED = {
    "name": "evening", "key_hash": HASH, "created_at": 200.0, "state": "ended",
    "started_at": 210.0, "ended_at": 290.0, "end_reason": "requested", "broadcast_id": "b-e",
}


async def test_import_legacy_imports_the_json_once_and_renames_it(
    registry: Registry, tmp_path: Path
) -> None:
    path = legacy_file(tmp_path, [WAITING, ENDED])

    assert await registry.import_legacy(path) == 2

    assert not path.exists()
    assert path.with_name("rooms.json.imported").exists()
    assert await registry.import_legacy(path) == 0
    morning = await registry.get_room("morning")
    evening = await registry.get_room("evening")
    assert morning is not None and evening is not None
    # As the ingest service read it: a waiting room comes back fresh, an ended one as it was.
    assert (morning.state, morning.started_at, morning.broadcast_id) == ("waiting", None, None)
    assert (evening.state, evening.started_at, evening.ended_at, evening.end_reason,
            evening.broadcast_id) == ("ended", 210.0, 290.0, "requested", "b-e")
    assert (morning.epoch, morning.next_msn) == (0, 1)


async def test_import_legacy_leaves_rooms_already_in_the_database(
    registry: Registry, tmp_path: Path
) -> None:
    await registry.create_room("morning", "d" * 64, 5.0)
    path = legacy_file(tmp_path, [WAITING, ENDED])

    assert await registry.import_legacy(path) == 1

    morning = await registry.get_room("morning")
    assert morning is not None and morning.key_hash == "d" * 64


async def test_import_legacy_without_a_file_imports_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    assert await registry.import_legacy(tmp_path / "ingest" / "rooms.json") == 0
    assert await registry.list_rooms() == []


@pytest.mark.parametrize("content", [
    '{"rooms": [{"name": "x", "key_hash"',
    '{"rooms": [{"name": "x", "created_at": 1}]}',
    '["not", "an", "object"]',
    '{"rooms": [{"name": "x", "key_hash": "h", "created_at": 1, "state": "exploded"}]}',
])
async def test_a_corrupt_legacy_file_raises_naming_it_and_is_left_in_place(
    registry: Registry, tmp_path: Path, content: str
) -> None:
    path = tmp_path / "rooms.json"
    path.write_text(content)

    with pytest.raises(RegistryError, match=str(path)):
        await registry.import_legacy(path)

    assert path.read_text() == content
    assert not path.with_name("rooms.json.imported").exists()
    assert await registry.list_rooms() == []


def test_parse_keeps_the_last_of_a_repeated_name() -> None:
    first = {**ENDED, "name": "x", "end_reason": "first"}
    last = {**ENDED, "name": "x", "end_reason": "last"}
    [room] = parse_rooms_json(json.dumps({"rooms": [first, last]}))
    assert room.end_reason == "last"


def test_parse_rejects_a_boolean_timestamp() -> None:
    with pytest.raises(ValueError, match=r"rooms\[0\]\.created_at"):
        parse_rooms_json(json.dumps({"rooms": [{**WAITING, "created_at": True}]}))
