"""Which rooms are private, for the origin and the tier: a private room is served only under
`/private/{room}/...`, a public one only under `/live/{room}/...`.

The edges check listener tokens (`hls.tokens`) and ask upstream for `/private/{room}/...`
with the token stripped; they never need to know which rooms are private. The origin and
the tier do, so that `/live/{private room}/...` answers 404 (a public path never leaks a
private room) and `/private/{public room}/...` does too (one path per object, one cache entry).

The answer comes from the rooms registry, cached per room for `ttl` seconds (a room's privacy
is fixed for its life; only a name ended and created again can change it), one lookup per
room at a time shared by every request that arrives meanwhile, at most `max_rooms` rooms
kept. When the database cannot be reached the last answer known stands; a room never seen
gets `PrivacyUnknown` (503): serving it publicly might leak it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Protocol

from prometheus_client import Counter, Gauge

from hls.tokens import PRIVATE_PREFIX
from registry import RegistryError

log = logging.getLogger(__name__)

LOOKUPS = Counter("townsquare_privacy_lookups_total",
                  "Room privacy looked up in the rooms database, by outcome", ["outcome"])
CACHED = Gauge("townsquare_privacy_cached_rooms", "Rooms whose privacy is cached")


class PrivacyUnknown(Exception):
    """The rooms database cannot say whether the room is private, and nothing is known."""


class RoomPrivacy(Protocol):
    """What the origin and the tier ask before serving a room."""

    async def is_private(self, room: str) -> bool: ...


class PrivacyLookup(Protocol):
    """Where privacy is read from: `registry.Registry`."""

    async def private_rooms(self, names: list[str]) -> dict[str, bool]: ...


class NoPrivateRooms:
    """Every room is public: an origin without a rooms database (`townsquare origin` on its
    own, a demo). Private rooms need the database-backed `RegistryPrivacy`."""

    async def is_private(self, room: str) -> bool:
        return False


class RegistryPrivacy:
    """Room privacy from the registry, cached (see the module docstring)."""

    def __init__(self, registry: PrivacyLookup, ttl: float = 2.0,
                 max_rooms: int = 10_000) -> None:
        self.registry = registry
        self.ttl = ttl
        self.max_rooms = max_rooms
        self._known: OrderedDict[str, tuple[bool, float]] = OrderedDict()  # room: (private, at)
        self._pending: dict[str, asyncio.Task[bool]] = {}

    async def is_private(self, room: str) -> bool:
        known = self._known.get(room)
        if known is not None and time.monotonic() - known[1] < self.ttl:
            return known[0]
        pending = self._pending.get(room)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._lookup(room))
            self._pending[room] = pending
        # Shielded: one caller giving up must not cancel the lookup others wait on.
        return await asyncio.shield(pending)

    async def _lookup(self, room: str) -> bool:
        try:
            try:
                found = await self.registry.private_rooms([room])
            except RegistryError as exc:
                LOOKUPS.labels("error").inc()
                known = self._known.get(room)
                if known is None:
                    raise PrivacyUnknown(f"the rooms database cannot be reached: whether room "
                                         f"{room} is private is unknown") from exc
                log.warning("privacy of room %s: %s; keeping what was known", room, exc)
                return known[0]
            # An unknown room is public: nothing private can be served under its name.
            private = found.get(room, False)
            LOOKUPS.labels("private" if private else "public").inc()
            self._known[room] = (private, time.monotonic())
            self._known.move_to_end(room)
            while len(self._known) > self.max_rooms:
                self._known.popitem(last=False)
            CACHED.set(len(self._known))
            return private
        finally:
            self._pending.pop(room, None)


def under_private(path: str) -> bool:
    """The request came in as `/private/{room}/...` (a URL path, token already stripped)."""
    return path.startswith(PRIVATE_PREFIX)


async def served_here(privacy: RoomPrivacy, room: str, path: str) -> bool:
    """Whether `path` is the one way the room is served: `/private/` for a private room,
    `/live/` for a public one. Raises PrivacyUnknown."""
    return await privacy.is_private(room) == under_private(path)
