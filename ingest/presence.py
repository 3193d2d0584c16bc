"""What a node tells the registry about the rooms it publishes: their audience and speakers.

The directory of public rooms (`packager.roomlist`) is one read of the registry, so the node
publishing a room writes there what only it knows: the room's audience (the edges' reports,
summed by its origin's `AudienceBoard`) and its speakers' display names. Every `every` seconds
it writes, in one transaction, the rooms whose figures changed since their last write; a room
that did not change costs nothing. A write that fails is logged, never raised: the rooms stay
on air, and the next round writes the newest figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter

from packager.status import Audience
from registry import Presence, Registry, RegistryError
from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare.ingest.presence")

WRITES = Counter("townsquare_ingest_presence_writes_total",
                 "Rooms' audience and speaker names written to the registry, by outcome "
                 "(written: rooms, failed: rounds)", ["outcome"])
EVERY_SECONDS = 5.0


class PublishedRoom(Protocol):
    """What is read of a room (`ingest.rooms.Room`)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def on_air(self) -> bool: ...

    def speaker_names(self) -> tuple[str, ...]: ...


class RoomSet(Protocol):
    """The rooms of this node (`ingest.rooms.Rooms`)."""

    def all(self) -> Sequence[PublishedRoom]: ...

    @property
    def node_id(self) -> str | None: ...


class PresenceWriter:
    def __init__(self, rooms: RoomSet, registry: Registry, audience: Audience | None,
                 every: float = EVERY_SECONDS) -> None:
        self.rooms = rooms
        self.registry = registry
        self.audience = audience
        self.every = every
        self._written: dict[str, Presence] = {}  # rooms on air here: what the registry has
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="presence")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def write_once(self) -> int:
        """Write the rooms whose figures changed; returns how many were written."""
        now = time.time()
        current: dict[str, Presence] = {}
        for room in self.rooms.all():
            if room.on_air and room.state == "live":
                audience = self.audience.total(room.name, now) if self.audience else 0
                current[room.name] = Presence(audience, room.speaker_names())
        # Bounded by the rooms on air here: those that left are forgotten.
        self._written = {name: p for name, p in self._written.items() if name in current}
        changed = {name: p for name, p in current.items() if self._written.get(name) != p}
        if not changed:
            return 0
        try:
            # `asyncio.timeout`, not `wait_for`: under Python 3.11, `wait_for` cancelled in
            # the turn its call finishes returns the result and drops the cancellation
            # (python/cpython#86296), and this loop then never stopped: a node's shutdown
            # hung here until it was killed.
            async with asyncio.timeout(self.every):
                await self.registry.record_presence(changed, self.rooms.node_id)
        except (RegistryError, TimeoutError) as exc:
            WRITES.labels("failed").inc()
            if not self._failing:
                log.warning("audience and speakers of %d rooms not written (tried again every "
                            "%.0f s): %s", len(changed), self.every,
                            exc or "the registry did not answer in time")
            self._failing = True
            return 0
        if self._failing:
            log.info("audience and speakers written again")
        self._failing = False
        self._written.update(changed)
        WRITES.labels("written").inc(len(changed))
        return len(changed)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.write_once()
            except Exception:  # never take the node down over a figure
                log.exception("writing audience and speakers failed")
