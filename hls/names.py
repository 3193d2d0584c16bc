"""Names: the room-name rule and the grammar of every object a room publishes.

One place says how a part, a segment, an init segment and each playlist are named, for the
packager that writes them, the store that keeps them, the origin that serves them and the
edge that caches them. A path that `parse_object` does not accept names nothing.

Object layout (store keys; URL paths are the same below `/live/`):

    live/{room}/master.m3u8                      the room's entry point
    live/{room}/room.json                        the current broadcast id (store only)
    live/{room}/{bid}/state.json                 live playlist models (store only)
    live/{room}/{bid}/recording.m3u8             multivariant playlist of a recording
    live/{room}/{bid}/{rendition}/init.mp4       init segment
    live/{room}/{bid}/{rendition}/p{msn}.{i}.m4s part i of segment msn
    live/{room}/{bid}/{rendition}/s{msn}.m4s     segment msn
    live/{room}/{bid}/{rendition}/live.m3u8      live media playlist
    live/{room}/{bid}/{rendition}/recording.m3u8 the recording's media playlist
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOM_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
_ROOM_RE = re.compile(ROOM_PATTERN)

LIVE_ROOT = "live"
MASTER = "master.m3u8"
LIVE_PLAYLIST = "live.m3u8"
RECORDING_PLAYLIST = "recording.m3u8"
INIT = "init.mp4"
ROOM_INFO = "room.json"
STATE = "state.json"

Kind = Literal["master", "playlist", "recording", "init", "part", "segment", "state", "room",
               "other"]
PLAYLIST_KINDS: frozenset[str] = frozenset({"master", "playlist", "recording"})
MEDIA_KINDS: frozenset[str] = frozenset({"init", "part", "segment"})

_SEGMENT = r"(?P<room>[a-z0-9][a-z0-9-]{0,63})"
_OBJECT_RE = re.compile(
    rf"^{_SEGMENT}/(?:"
    r"(?P<master>master\.m3u8)|(?P<roominfo>room\.json)|"
    r"(?P<bid>[A-Za-z0-9-]{1,64})/(?:"
    r"(?P<state>state\.json)|(?P<rec>recording\.m3u8)|"
    r"(?P<rend>[A-Za-z0-9-]{1,32})/(?:"
    r"(?P<init>init\.mp4)|(?P<live>live\.m3u8)|(?P<rrec>recording\.m3u8)|"
    r"p(?P<pmsn>\d{1,15})\.(?P<part>\d{1,4})\.m4s|s(?P<smsn>\d{1,15})\.m4s)))$"
)


class InvalidRoomName(ValueError):
    """A room name that does not match ROOM_PATTERN."""


def is_valid_room(name: str) -> bool:
    return bool(_ROOM_RE.fullmatch(name))


def check_room(name: str) -> str:
    if not is_valid_room(name):
        raise InvalidRoomName(
            f"room name {name!r} must match {ROOM_PATTERN} (lowercase letters, digits, dashes)"
        )
    return name


def part_name(msn: int, index: int) -> str:
    return f"p{msn}.{index}.m4s"


def segment_name(msn: int) -> str:
    return f"s{msn}.m4s"


def room_key(room: str, *rest: str) -> str:
    """The store key of an object of `room`: `live/{room}/...`."""
    return "/".join((LIVE_ROOT, room, *rest))


@dataclass(frozen=True, slots=True)
class ObjectName:
    """One published object, as its path names it."""

    kind: Kind
    room: str
    broadcast: str | None = None
    rendition: str | None = None
    msn: int | None = None
    part: int | None = None

    @property
    def is_playlist(self) -> bool:
        return self.kind in PLAYLIST_KINDS


def parse_object(path: str) -> ObjectName | None:
    """Read a path below `live/` (`demo/b1/aac96/p3.1.m4s`); None when it names no object."""
    m = _OBJECT_RE.match(path)
    if m is None:
        return None
    room, bid, rend = m["room"], m["bid"], m["rend"]
    if m["master"]:
        return ObjectName("master", room)
    if m["roominfo"]:
        return ObjectName("room", room)
    if m["state"]:
        return ObjectName("state", room, bid)
    if m["rec"]:
        return ObjectName("recording", room, bid)
    if m["init"]:
        return ObjectName("init", room, bid, rend)
    if m["live"]:
        return ObjectName("playlist", room, bid, rend)
    if m["rrec"]:
        return ObjectName("recording", room, bid, rend)
    if m["pmsn"] is not None:
        return ObjectName("part", room, bid, rend, int(m["pmsn"]), int(m["part"]))
    return ObjectName("segment", room, bid, rend, int(m["smsn"]))


def kind_of(path: str) -> Kind:
    """The kind of object a path below `live/` names; "other" when it names none."""
    name = parse_object(path)
    return name.kind if name is not None else "other"
