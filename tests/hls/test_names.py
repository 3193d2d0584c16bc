"""The object grammar: every name the packager writes parses back to what it names."""

from __future__ import annotations

import pytest

from hls.names import (
    InvalidRoomName,
    ObjectName,
    check_room,
    epoch_id,
    epoch_number,
    kind_of,
    new_broadcast_id,
    parse_object,
    part_name,
    room_key,
    segment_name,
)

E = "e3-0a1b2c"
B = "b20261125T120000Z-0a1b2c"


@pytest.mark.parametrize(("path", "expected"), [
    ("demo/master.m3u8", ObjectName("master", "demo")),
    ("demo/room.json", ObjectName("room", "demo")),
    ("demo/state.json", ObjectName("state", "demo")),
    ("demo/aac96/live.m3u8", ObjectName("playlist", "demo", "aac96")),
    (f"demo/aac96/{E}/init.mp4", ObjectName("init", "demo", "aac96", E)),
    (f"demo/opus64/{E}/p12.3.m4s", ObjectName("part", "demo", "opus64", E, 12, 3)),
    (f"demo/opus64/{E}/s12.m4s", ObjectName("segment", "demo", "opus64", E, 12)),
    (f"demo/aac96/{E}/i4.m3u8", ObjectName("index", "demo", "aac96", E, chunk=4)),
    (f"demo/{B}/epochs.json", ObjectName("epochs", "demo", broadcast=B)),
    (f"demo/{B}/recording.m3u8", ObjectName("recording", "demo", broadcast=B)),
    (f"demo/{B}/aac96/recording.m3u8", ObjectName("recording", "demo", "aac96", broadcast=B)),
])
def test_each_published_name_parses_to_what_it_names(path: str, expected: ObjectName) -> None:
    assert parse_object(path) == expected


@pytest.mark.parametrize("path", [
    "", "demo", "Demo/master.m3u8", "demo/x.m3u8", "demo/aac96/x.m3u8", f"demo/aac96/{E}/p1.m4s",
    f"demo/aac96/{E}/q1.0.m4s", f"demo/aac96/{E}/p1.0.m4s.bak", f"demo/aac96/../{E}/init.mp4",
    f"demo/aac96/{E}/extra/init.mp4", "demo/aac96/e3/init.mp4", "demo/aac96/b1/init.mp4",
    f"demo/aac96/{E}/s-1.m4s", f"demo/aac96/{E}/p99999999999999999.0.m4s",
    "demo/b1/aac96/live.m3u8", "demo/aac96/recording.m3u8", f"demo/{E}/epochs.json",
])
def test_paths_outside_the_grammar_name_nothing(path: str) -> None:
    assert parse_object(path) is None
    assert kind_of(path) == "other"


def test_builders_write_the_names_the_parser_reads() -> None:
    assert part_name(7, 2) == "p7.2.m4s" and segment_name(7) == "s7.m4s"
    eid = epoch_id(3, B)
    assert epoch_number(eid) == 3 and eid == epoch_id(3, B) != epoch_id(3, B + "x")
    key = room_key("demo", "aac96", eid, part_name(7, 2))
    assert key == f"live/demo/aac96/{eid}/p7.2.m4s"
    assert parse_object(key.partition("/")[2]) == ObjectName("part", "demo", "aac96", eid, 7, 2)
    bid = new_broadcast_id(1_790_000_000)
    assert bid.startswith("b20260921T") and parse_object(f"demo/{bid}/recording.m3u8")


def test_room_names_are_lowercase_slugs() -> None:
    assert check_room("demo-1") == "demo-1"
    for bad in ("", "-demo", "Demo", "a" * 65, "de mo", "demo/"):
        with pytest.raises(InvalidRoomName):
            check_room(bad)
