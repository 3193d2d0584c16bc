"""The directory of public rooms, `/live/rooms.json`: who is on air now, and what can be replayed.

    {"live":    [{"room", "title", "speakers": [names], "audience", "since"}],
     "replays": [{"room", "title", "started_at", "ended_at", "recording"}],   newest first
     "updated": unix seconds}

The origin and the tier answer it from the rooms registry, where each room's owner writes its
audience and speaker names every few seconds. Edges keep it `DIRECTORY_CACHE` and ask once per
lifetime, so a page opened by a crowd costs the origin one request per edge, and `RoomList`
turns those into at most one database read per `ttl`: requests arriving meanwhile share the
read in flight or the last answer. When the database cannot be read, the last document known
is served; an origin without a registry lists nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from prometheus_client import Counter

from packager.status import recording_of, render
from registry import RegistryError, RoomListing, RoomRecord

log = logging.getLogger(__name__)

READS = Counter("townsquare_room_list_reads_total",
                "Reads of the public rooms for the directory, by outcome", ["outcome"])
MAX_REPLAYS = 50
MAX_LIVE = 1000  # a directory page lists this many live rooms at most


class PublicRooms(Protocol):
    """Where the directory is read from (`registry.Registry`)."""

    async def public_rooms(self, replays: int = ..., live: int = ...) -> RoomListing: ...


class RoomListUnavailable(Exception):
    """The registry cannot be read and no directory has been read before."""


def compose_room_list(live: Sequence[RoomRecord], replays: Sequence[RoomRecord],
                      updated: float) -> dict[str, Any]:
    """The directory document (public rooms only: the caller's query chose them)."""
    return {
        "live": [{"room": r.name, "title": r.title, "speakers": list(r.speaker_names),
                  "audience": max(0, r.audience), "since": r.started_at} for r in live],
        "replays": [{"room": r.name, "title": r.title, "started_at": r.started_at,
                     "ended_at": r.ended_at,
                     "recording": recording_of(r.name, r.broadcast_id, r.started_at)}
                    for r in replays],
        "updated": round(updated, 3),
    }


class RoomList:
    """The directory as JSON bytes, read at most once per `ttl` seconds (see the module
    docstring); without a registry, the empty directory."""

    def __init__(self, registry: PublicRooms | None, ttl: float = 1.0,
                 replays: int = MAX_REPLAYS, live: int = MAX_LIVE) -> None:
        self.registry = registry
        self.ttl = ttl
        self.replays = replays
        self.live = live
        self._body: bytes | None = None
        self._error: str | None = None  # why the last read failed, while nothing was read
        self._read_at = float("-inf")  # monotonic time of the last read, failed or not
        self._pending: asyncio.Task[bytes] | None = None

    async def document(self) -> bytes:
        """The directory now; raises RoomListUnavailable when it cannot be read and nothing
        was read before."""
        if self.registry is None:
            return render(compose_room_list((), (), time.time()))
        if time.monotonic() - self._read_at < self.ttl:
            if self._body is not None:
                return self._body
            if self._error is not None:
                raise RoomListUnavailable(self._error)
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._read())
        # Shielded: one caller giving up must not cancel the read others wait on.
        return await asyncio.shield(self._pending)

    async def _read(self) -> bytes:
        assert self.registry is not None
        try:
            listing = await self.registry.public_rooms(replays=self.replays, live=self.live)
        except RegistryError as exc:
            READS.labels("error").inc()
            self._read_at = time.monotonic()  # the next try waits a ttl, like a success
            if self._body is None:
                self._error = f"the directory of rooms cannot be read now: {exc}"
                raise RoomListUnavailable(self._error) from exc
            log.warning("directory of rooms: %s; serving the last one read", exc)
            return self._body
        else:
            READS.labels("ok").inc()
            self._body = render(compose_room_list(listing.live, listing.replays, time.time()))
            self._error = None
            self._read_at = time.monotonic()
            return self._body
        finally:
            self._pending = None
