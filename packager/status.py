"""A room's status object, `/live/{room}/status.json`: title, state, speakers, audience.

Listener and broadcaster pages poll it about once a second, through the edges, which keep each
answer `STATUS_CACHE` (a second) and ask upstream once for all the pages they serve. Upstream,
the origin of the node publishing the room answers it: only that node knows who is speaking
(its mixer's levels) and hears the edges' audience reports.

    facts = RoomFacts("demo", "Demo room", "", "live", 1764120000.0, None, speakers, rec)
    compose(facts, audience=123, updated=time.time())   # the dict; `render` gives the bytes

`compose` is pure. `StatusDesk` is the I/O around it: the facts come from the node's own rooms
(a `StatusFeed` the ingest service attaches) or, for a room this process does not hold, from
the registry (waiting, ended, or on air elsewhere), and the audience from the `AudienceBoard`.
Whatever the number of requests, a room's object is composed at most once per wall-clock
second: later requests in the same second get the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import Counter, Gauge

from hls.names import recording_path
from registry import RegistryError, RoomRecord

log = logging.getLogger(__name__)

COMPOSED = Counter("townsquare_status_composed_total",
                   "Room status objects composed (at most one per room per second), by where "
                   "the facts came from (node, registry, unknown)", ["source"])
MEMO_ROOMS = Gauge("townsquare_status_memo_rooms",
                   "Rooms whose status object of the current second is kept")

State = Literal["waiting", "live", "ended"]


@dataclass(frozen=True, slots=True)
class SpeakerFacts:
    id: str
    name: str
    speaking: bool  # heard within the last moment, and not muted
    muted: bool


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What a status object says of a room, before the audience and the time are added."""

    room: str
    title: str
    description: str
    state: State
    since: float | None  # unix seconds the broadcast started
    ended_at: float | None
    speakers: tuple[SpeakerFacts, ...]
    recording: str | None  # URL path of the latest broadcast's recording
    # Listeners when known otherwise (the registry's last figure); None: ask the board.
    audience: int | None = None


def compose(facts: RoomFacts, audience: int, updated: float) -> dict[str, Any]:
    """The status object of the contract, as a dict ready for JSON."""
    return {
        "room": facts.room,
        "title": facts.title,
        "description": facts.description,
        "state": facts.state,
        "since": facts.since,
        "ended_at": facts.ended_at,
        "speakers": [{"id": s.id, "name": s.name, "speaking": s.speaking, "muted": s.muted}
                     for s in facts.speakers],
        "audience": max(0, audience),
        "recording": facts.recording,
        "updated": round(updated, 3),
    }


def render(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (titles in any script stay readable)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def recording_of(room: str, broadcast_id: str | None, started_at: float | None) -> str | None:
    """The recording of a room's latest broadcast, once it has gone on air."""
    if broadcast_id is None or started_at is None:
        return None
    return recording_path(room, broadcast_id)


def facts_from_record(rec: RoomRecord) -> RoomFacts:
    """What the registry tells of a room this process does not publish: its state and
    metadata, and while it is live elsewhere, the audience its owner last wrote (who speaks
    right now only the owner knows)."""
    live = rec.state == "live"
    return RoomFacts(
        room=rec.name, title=rec.title, description=rec.description, state=rec.state,
        since=rec.started_at, ended_at=rec.ended_at if rec.state == "ended" else None,
        speakers=(), recording=recording_of(rec.name, rec.broadcast_id, rec.started_at),
        audience=rec.audience if live else 0)


class StatusFeed(Protocol):
    """The rooms this process holds (`ingest.presence.RoomsFeed`)."""

    def room_facts(self, room: str) -> RoomFacts | None: ...


class RoomLookup(Protocol):
    """Rooms in the registry (`registry.Registry`)."""

    async def get_room(self, name: str) -> RoomRecord | None: ...


class Audience(Protocol):
    """Listeners per room across the edges (`packager.audience.AudienceBoard`)."""

    def total(self, room: str, now: float) -> int: ...


class OnAirFeed:
    """Facts for an origin that runs a packager but no ingest (`townsquare origin --demo`):
    a room on air in its hub is live, and nothing more is known of it."""

    def __init__(self, on_air: Callable[[str], bool]) -> None:
        self.on_air = on_air

    def room_facts(self, room: str) -> RoomFacts | None:
        if not self.on_air(room):
            return None
        return RoomFacts(room, "", "", "live", None, None, (), None)


class StatusUnavailable(Exception):
    """The room is not held here and the registry cannot be read."""


class StatusDesk:
    """Status objects of rooms, composed at most once per room per second (see the module
    docstring). At most `max_rooms` rooms are kept for the current second; past that, an
    object is composed for each request (still cheap, never unbounded)."""

    def __init__(self, records: RoomLookup | None = None, audience: Audience | None = None,
                 max_rooms: int = 10_000) -> None:
        self.records = records
        self.audience = audience
        self.max_rooms = max_rooms
        self._feed: StatusFeed | None = None
        self._second = -1
        self._memo: dict[str, bytes | None] = {}
        self._failed: dict[str, str] = {}  # rooms the registry could not be read for, this second
        self._pending: dict[str, asyncio.Task[RoomRecord | None]] = {}

    def attach(self, feed: StatusFeed | None) -> None:
        """The rooms of this process: the ingest service attaches them once they exist."""
        self._feed = feed

    async def status(self, room: str, now: float | None = None) -> bytes | None:
        """The room's status object as JSON bytes; None for an unknown room. Raises
        StatusUnavailable when only the unreachable registry could say."""
        now = time.time() if now is None else now
        second = int(now)
        if second != self._second:
            self._second = second
            self._memo.clear()
            self._failed.clear()
        if room in self._memo:
            return self._memo[room]
        if room in self._failed:
            raise StatusUnavailable(self._failed[room])
        facts = self._feed.room_facts(room) if self._feed is not None else None
        source = "node"
        if facts is None:
            try:
                rec = await self._record(room)
            except StatusUnavailable as exc:
                if int(now) == self._second and len(self._failed) < self.max_rooms:
                    self._failed[room] = str(exc)
                raise
            facts = facts_from_record(rec) if rec is not None else None
            source = "registry" if facts is not None else "unknown"
        COMPOSED.labels(source).inc()
        body = None
        if facts is not None:
            audience = facts.audience
            if audience is None:
                audience = self.audience.total(room, now) if self.audience is not None else 0
            body = render(compose(facts, audience, now))
        if int(now) == self._second and len(self._memo) < self.max_rooms:
            self._memo[room] = body
            MEMO_ROOMS.set(len(self._memo))
        return body

    async def _record(self, room: str) -> RoomRecord | None:
        if self.records is None:
            return None
        pending = self._pending.get(room)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._lookup(room))
            self._pending[room] = pending
        try:
            # Shielded: one caller giving up must not cancel the lookup others wait on.
            return await asyncio.shield(pending)
        except RegistryError as exc:
            raise StatusUnavailable(f"the status of room {room} cannot be read now: "
                                    f"{exc}") from exc

    async def _lookup(self, room: str) -> RoomRecord | None:
        assert self.records is not None
        try:
            return await self.records.get_room(room)
        finally:
            self._pending.pop(room, None)
