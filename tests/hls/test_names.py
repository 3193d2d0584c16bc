"""The object grammar: every name the packager writes parses back to what it names."""

from __future__ import annotations

import pytest

from hls.names import (
    InvalidRoomName,
    ObjectName,
    check_room,
    kind_of,
    parse_object,
    part_name,
    room_key,
    segment_name,
)


@pytest.mark.parametrize(("path", "expected"), [
    ("demo/master.m3u8", ObjectName("master", "demo")),
    ("demo/room.json", ObjectName("room", "demo")),
    ("demo/b1/state.json", ObjectName("state", "demo", "b1")),
    ("demo/b1/recording.m3u8", ObjectName("recording", "demo", "b1")),
    ("demo/b1/aac96/recording.m3u8", ObjectName("recording", "demo", "b1", "aac96")),
    ("demo/b1/aac96/live.m3u8", ObjectName("playlist", "demo", "b1", "aac96")),
    ("demo/b1/aac96/init.mp4", ObjectName("init", "demo", "b1", "aac96")),
    ("demo/b1/opus64/p12.3.m4s", ObjectName("part", "demo", "b1", "opus64", 12, 3)),
    ("demo/b1/opus64/s12.m4s", ObjectName("segment", "demo", "b1", "opus64", 12)),
])
def test_each_published_name_parses_to_what_it_names(path: str, expected: ObjectName) -> None:
    assert parse_object(path) == expected


@pytest.mark.parametrize("path", [
    "", "demo", "Demo/master.m3u8", "demo/x.m3u8", "demo/b1/aac96/p1.m4s", "demo/b1/aac96/q1.0.m4s",
    "demo/b1/aac96/p1.0.m4s.bak", "demo/b1/aac96/../init.mp4", "demo/b1/aac96/extra/init.mp4",
    "demo/b.1/aac96/init.mp4", "demo/b1/aac96/s-1.m4s", "demo/b1/aac96/p99999999999999999.0.m4s",
])
def test_paths_outside_the_grammar_name_nothing(path: str) -> None:
    assert parse_object(path) is None
    assert kind_of(path) == "other"


def test_builders_write_the_names_the_parser_reads() -> None:
    assert part_name(7, 2) == "p7.2.m4s" and segment_name(7) == "s7.m4s"
    assert room_key("demo", "b1", "aac96", part_name(7, 2)) == "live/demo/b1/aac96/p7.2.m4s"
    assert parse_object(f"demo/b1/aac96/{part_name(7, 2)}") == ObjectName(
        "part", "demo", "b1", "aac96", 7, 2)


def test_room_names_are_lowercase_slugs() -> None:
    assert check_room("demo-1") == "demo-1"
    for bad in ("", "-demo", "Demo", "a" * 65, "de mo", "demo/"):
        with pytest.raises(InvalidRoomName):
            check_room(bad)
