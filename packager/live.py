"""Live state of the rooms on air, shared by the packager (writer) and the origin (reader).

A `LiveRoom` is one epoch of a room: its master playlist, each rendition's current playlist
model, its init segment and the bytes of its recent parts and segments. Readers wait for a change on one future that every
update resolves and replaces, so ten thousand held requests cost one wake-up each and no
polling.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

from packager.ladder import Rendition
from packager.playlist import MediaPlaylist, Part, RenditionReport, Segment, render_media

# Bytes of recent objects kept in memory per rendition: about four segments of parts
# plus the segments themselves, enough for every client near the live edge.
RECENT_OBJECTS = 80


@dataclass(slots=True)
class LiveRendition:
    rendition: Rendition
    playlist: MediaPlaylist
    init: bytes | None = None
    recent: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    _rendered: dict[tuple[int, bool], bytes] = field(default_factory=dict)
    # Each segment of the window as state JSON, by media sequence number: only the
    # window's segments are kept (see `dumps_state`).
    _segment_json: dict[int, tuple[Segment, str]] = field(default_factory=dict)
    # The whole playlist's state JSON and the playlist it was made from: a part of one
    # rendition leaves the others' playlists as they were.
    _playlist_text: tuple[MediaPlaylist, str] | None = None
    _changed: asyncio.Future[None] | None = None

    def remember(self, name: str, data: bytes) -> None:
        self.recent[name] = data
        while len(self.recent) > RECENT_OBJECTS:
            self.recent.popitem(last=False)


class LiveRoom:
    """One epoch of one room as the origin sees it."""

    def __init__(self, room: str, epoch: str, renditions: list[Rendition],
                 playlists: dict[str, MediaPlaylist], master: bytes = b"", local: bool = False):
        self.room = room
        self.epoch = epoch
        self.master = master
        # The master is announced once every rendition has whole segments enough for players
        # that ignore parts (`packager.pipeline.ANNOUNCE_SEGMENTS`).
        self.announced = False
        # A packager in this process publishes the epoch, and will announce it: a request for
        # the master may wait for that. An epoch read from the store's `state.json` is never
        # announced here; its master comes from the store.
        self.local = local
        self.renditions = {r.name: LiveRendition(r, playlists[r.name]) for r in renditions}
        self.version = 0
        # The epoch will not grow (suspended, handed over, lost or ended): a request held for
        # a part it does not have stops waiting at once (`stop`).
        self.stopped = False

    @property
    def ended(self) -> bool:
        return all(lr.playlist.ended for lr in self.renditions.values())

    def touch(self, names: set[str] | None = None) -> None:
        """Record a change and wake the readers of the renditions in `names` (all when
        None). Every rendition's rendered text is dropped: rendition reports moved."""
        self.version += 1
        for name, lr in self.renditions.items():
            lr._rendered.clear()
            if names is None or name in names:
                fut, lr._changed = lr._changed, None
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def stop(self) -> None:
        """Record that the epoch has cut its last part, and wake every held reader."""
        self.stopped = True
        self.touch()

    def changed(self, name: str) -> asyncio.Future[None]:
        """The future the next change of rendition `name` resolves. The wait begins at this
        call, not when the caller's task first runs: a change in between (a `stop` in the
        same turn of the loop) is not missed, and no later change may ever come. Every
        reader shares it: wait on it without cancelling it (`asyncio.wait`, or shielded)."""
        lr = self.renditions[name]
        if lr._changed is None:
            lr._changed = asyncio.get_running_loop().create_future()
        return lr._changed

    def release(self) -> None:
        """Drop the bytes this epoch held (it has stopped and the store has them)."""
        for lr in self.renditions.values():
            lr.recent.clear()
            lr._rendered.clear()
            lr._segment_json.clear()
            lr._playlist_text = None
            lr.init = None

    def reports_for(self, name: str) -> tuple[RenditionReport, ...]:
        out = []
        for other, lr in self.renditions.items():
            if other == name:
                continue
            msn, part = lr.playlist.last_position()
            if msn >= 0:
                out.append(RenditionReport(f"../{other}/live.m3u8", msn, part))
        return tuple(out)

    def render(self, name: str, skip: bool) -> bytes:
        """The rendition's playlist text, with fresh rendition reports; memoised per update."""
        lr = self.renditions[name]
        key = (self.version, skip)
        text = lr._rendered.get(key)
        if text is None:
            text = render_media(lr.playlist.with_reports(self.reports_for(name)), skip).encode()
            lr._rendered[key] = text
        return text

    def to_state(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "epoch": self.epoch,
            "master": self.master.decode(),
            "version": self.version,
            "renditions": [asdict(lr.rendition) for lr in self.renditions.values()],
            "playlists": {n: playlist_to_dict(lr.playlist) for n, lr in self.renditions.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LiveRoom:
        rends = [Rendition(**r) for r in state["renditions"]]
        pls = {n: playlist_from_dict(d) for n, d in state["playlists"].items()}
        room = cls(state["room"], state["epoch"], rends, pls, state.get("master", "").encode())
        room.version = int(state.get("version", 0))
        return room


def playlist_to_dict(pl: MediaPlaylist) -> dict[str, Any]:
    d: dict[str, Any] = _plain(pl)
    d["rendition_reports"] = []
    return d


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(model: Any) -> dict[str, Any]:
    """A frozen playlist model (a dataclass whose tuples hold dataclasses or plain values) as
    JSON-ready dicts and lists. Not `dataclasses.asdict`: that deep-copies every value of
    the window, and at one state write per part it cost more than the rest of publishing."""
    out = {}
    for name in _field_names(model.__class__):
        value = getattr(model, name)
        if type(value) is tuple:
            value = [_plain(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
        out[name] = value
    return out


def playlist_from_dict(d: dict[str, Any]) -> MediaPlaylist:
    d = dict(d)
    d["segments"] = tuple(
        Segment(**{**s, "parts": tuple(Part(**p) for p in s["parts"])}) for s in d["segments"]
    )
    d["partial"] = tuple(Part(**p) for p in d["partial"])
    d["rendition_reports"] = ()
    return MediaPlaylist(**d)


def dumps_state(room: LiveRoom) -> bytes:
    """`room.to_state()` as compact JSON, byte for byte, built so that a segment is
    serialised once, when it enters its window: the state is written at every part, and
    serialising every window (some 400 parts) each time cost more than encoding them."""
    playlists = ",".join(f"{_dumps(name)}:{_playlist_json(lr)}"
                         for name, lr in room.renditions.items())
    head = _dumps({"room": room.room, "epoch": room.epoch, "master": room.master.decode(),
                   "version": room.version,
                   "renditions": [_rendition_dict(lr.rendition)
                                  for lr in room.renditions.values()]})
    return f"{head[:-1]},\"playlists\":{{{playlists}}}}}".encode()


_ENCODER = json.JSONEncoder(separators=(",", ":"))
# Stands in for the segments while the rest of a playlist is encoded, then replaced by their
# memoised text: a NUL cannot occur in a playlist's values.
_SEGMENTS = "\x00segments\x00"
_SEGMENTS_JSON = _ENCODER.encode(_SEGMENTS)


@cache
def _rendition_dict(rendition: Rendition) -> dict[str, Any]:
    """`asdict(rendition)`, once per rendition: a third of the state's cost at every part."""
    return asdict(rendition)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _playlist_json(lr: LiveRendition) -> str:
    """`playlist_to_dict(lr.playlist)` as compact JSON, each segment's text memoised, the rest
    encoded in one call."""
    pl, memo = lr.playlist, lr._segment_json
    if lr._playlist_text is not None and lr._playlist_text[0] is pl:
        return lr._playlist_text[1]
    segments = []
    window = {}
    for seg in pl.segments:
        hit = memo.get(seg.msn)
        if hit is None or hit[0] is not seg:
            hit = (seg, _dumps(_plain(seg)))
        window[seg.msn] = hit
        segments.append(hit[1])
    lr._segment_json = window
    rest: dict[str, Any] = {}
    for name in _field_names(MediaPlaylist):
        if name == "segments":
            rest[name] = _SEGMENTS
        elif name == "rendition_reports":
            rest[name] = []
        else:
            value = getattr(pl, name)
            if type(value) is tuple:
                value = [_plain(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
            rest[name] = value
    text = _dumps(rest).replace(_SEGMENTS_JSON, f"[{','.join(segments)}]", 1)
    lr._playlist_text = (pl, text)
    return text


class Hub:
    """The rooms on air in this process, by name."""

    def __init__(self) -> None:
        self.rooms: dict[str, LiveRoom] = {}

    def get(self, room: str) -> LiveRoom | None:
        return self.rooms.get(room)

    def put(self, live: LiveRoom) -> None:
        old = self.rooms.get(live.room)
        self.rooms[live.room] = live
        if old is not None:
            old.touch()  # wake readers of the previous epoch so they re-resolve

    def remove(self, live: LiveRoom) -> None:
        """Forget an epoch that has stopped, unless a newer one has taken its place."""
        if self.rooms.get(live.room) is live:
            del self.rooms[live.room]
            live.touch()
