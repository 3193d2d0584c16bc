"""Names: the room-name rule and the grammar of every object a room publishes.

One place says how a part, a segment, an init segment and each playlist are named, for the
packager that writes them, the store that keeps them, the origin that serves them and the
edge that caches them. A path that `parse_object` does not accept names nothing.

A room's listener URLs never change: the master and each rendition's live playlist keep their
names across broadcasts, restarts and crashes. Media objects carry the epoch that wrote them
(an epoch is one run of a room's packager, `e{n}-{tag}`: `n` is the room's fencing number,
`tag` comes from the broadcast),
so a name is written once and means one thing to every cache, forever.

Object layout (store keys; URL paths are the same below `/live/`):

    live/rooms.json                                the directory of public rooms (served,
                                                   never stored)
    live/{room}/master.m3u8                        the room's entry point
    live/{room}/status.json                        title, state, speakers, audience (served by
                                                   the room's owner, never stored)
    live/{room}/room.json                          the epoch on air now (store only)
    live/{room}/state.json                         live playlist models (store only)
    live/{room}/{rendition}/live.m3u8              live media playlist
    live/{room}/{rendition}/{epoch}/init.mp4       init segment
    live/{room}/{rendition}/{epoch}/p{msn}.{i}.m4s part i of segment msn
    live/{room}/{rendition}/{epoch}/s{msn}.m4s     segment msn
    live/{room}/{rendition}/{epoch}/i{k}.m3u8      recording index, chunk k (store only)
    live/{room}/{broadcast}/epochs.json            the epochs of a broadcast (store only)
    live/{room}/{broadcast}/recording.m3u8         multivariant playlist of a recording
    live/{room}/{broadcast}/{rendition}/recording.m3u8  a recording's media playlist

A broadcast is a room's life on air from its first speaker to its end; it spans every epoch
that restarts and crashes cut it into.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
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
EPOCHS = "epochs.json"
STATUS = "status.json"
ROOM_LIST = "rooms.json"

Kind = Literal["master", "playlist", "recording", "init", "part", "segment", "index", "state",
               "room", "epochs", "status", "directory", "other"]
PLAYLIST_KINDS: frozenset[str] = frozenset({"master", "playlist", "recording"})
MEDIA_KINDS: frozenset[str] = frozenset({"init", "part", "segment"})
# JSON documents composed on request (a room's status, the directory of rooms), never stored.
STATUS_KINDS: frozenset[str] = frozenset({"status", "directory"})
# What listeners may ask for; the other kinds name objects only the store holds.
PUBLIC_KINDS: frozenset[str] = PLAYLIST_KINDS | MEDIA_KINDS | STATUS_KINDS

_NAME = r"[A-Za-z0-9-]{1,32}"
EPOCH_PATTERN = r"e\d{1,9}-[0-9a-f]{6}"
BROADCAST_PATTERN = r"b\d{8}T\d{6}Z-[0-9a-f]{6}"
_OBJECT_RE = re.compile(
    r"^(?:(?P<directory>rooms\.json)|(?P<room>[a-z0-9][a-z0-9-]{0,63})/(?:"
    r"(?P<master>master\.m3u8)|(?P<roominfo>room\.json)|(?P<state>state\.json)|"
    r"(?P<status>status\.json)|"
    rf"(?P<bid>{BROADCAST_PATTERN})/(?:(?P<epochs>epochs\.json)|(?P<rec>recording\.m3u8)|"
    rf"(?P<recrend>{_NAME})/recording\.m3u8)|"
    rf"(?P<rend>{_NAME})/(?:(?P<live>live\.m3u8)|"
    rf"(?P<eid>{EPOCH_PATTERN})/(?:(?P<init>init\.mp4)|"
    r"p(?P<pmsn>\d{1,15})\.(?P<part>\d{1,4})\.m4s|s(?P<smsn>\d{1,15})\.m4s|"
    r"i(?P<chunk>\d{1,6})\.m3u8))))$"
)
_EPOCH_RE = re.compile(r"^e(?P<n>\d{1,9})-[0-9a-f]{6}$")


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


def is_rendition_name(name: str) -> bool:
    """Whether `name` can name a rendition folder without reading as another object."""
    return (re.fullmatch(_NAME, name) is not None and re.fullmatch(BROADCAST_PATTERN, name) is None
            and re.fullmatch(EPOCH_PATTERN, name) is None)


def part_name(msn: int, index: int) -> str:
    return f"p{msn}.{index}.m4s"


def segment_name(msn: int) -> str:
    return f"s{msn}.m4s"


def index_name(chunk: int) -> str:
    return f"i{chunk}.m3u8"


def epoch_id(number: int, broadcast: str) -> str:
    """An epoch's folder name: its fencing number and a tag of its broadcast. Numbers never
    repeat within a room, broadcast ids never repeat at all: the name is unique forever."""
    return f"e{number}-{hashlib.sha256(broadcast.encode()).hexdigest()[:6]}"


def epoch_number(eid: str) -> int:
    m = _EPOCH_RE.match(eid)
    if m is None:
        raise ValueError(f"not an epoch id: {eid!r}")
    return int(m["n"])


def new_broadcast_id(started_at: float) -> str:
    """A new broadcast's id: when it began (UTC) and a random tag."""
    return time.strftime("b%Y%m%dT%H%M%SZ", time.gmtime(started_at)) + "-" + secrets.token_hex(3)


def room_key(room: str, *rest: str) -> str:
    """The store key of an object of `room`: `live/{room}/...`."""
    return "/".join((LIVE_ROOT, room, *rest))


def recording_path(room: str, broadcast: str) -> str:
    """The URL path of a broadcast's recording: `/live/{room}/{broadcast}/recording.m3u8`."""
    return "/" + room_key(room, broadcast, RECORDING_PLAYLIST)


@dataclass(frozen=True, slots=True)
class ObjectName:
    """One published object, as its path names it (the directory belongs to no room: its
    `room` is empty)."""

    kind: Kind
    room: str
    rendition: str | None = None
    epoch: str | None = None
    msn: int | None = None
    part: int | None = None
    broadcast: str | None = None
    chunk: int | None = None

    @property
    def is_playlist(self) -> bool:
        return self.kind in PLAYLIST_KINDS


def parse_object(path: str) -> ObjectName | None:
    """Read a path below `live/` (`demo/aac96/e3-a1b2c3/p3.1.m4s`); None when it names no
    object."""
    m = _OBJECT_RE.match(path)
    if m is None:
        return None
    if m["directory"]:
        return ObjectName("directory", "")
    room, rend, eid, bid = m["room"], m["rend"], m["eid"], m["bid"]
    if m["status"]:
        return ObjectName("status", room)
    if m["master"]:
        return ObjectName("master", room)
    if m["roominfo"]:
        return ObjectName("room", room)
    if m["state"]:
        return ObjectName("state", room)
    if bid is not None:
        if m["epochs"]:
            return ObjectName("epochs", room, broadcast=bid)
        return ObjectName("recording", room, m["recrend"], broadcast=bid)
    if m["live"]:
        return ObjectName("playlist", room, rend)
    if m["init"]:
        return ObjectName("init", room, rend, eid)
    if m["pmsn"] is not None:
        return ObjectName("part", room, rend, eid, int(m["pmsn"]), int(m["part"]))
    if m["smsn"] is not None:
        return ObjectName("segment", room, rend, eid, int(m["smsn"]))
    return ObjectName("index", room, rend, eid, chunk=int(m["chunk"]))


def kind_of(path: str) -> Kind:
    """The kind of object a path below `live/` names; "other" when it names none."""
    name = parse_object(path)
    return name.kind if name is not None else "other"
