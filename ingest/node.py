"""This ingest node in a cluster: the rooms it owns by lease, kept alive by heartbeat.

Any number of nodes share the rooms database and the object store. A node publishes a room
only while it holds the room's lease (`registry.take_room`: one conditional write, a new
epoch that fences every earlier owner). The keeper renews the leases every third of their
lifetime; a room whose renewal is refused has another owner and is stopped here at once, and
when the database cannot be reached at all, every room is stopped before its lease can
expire, so two nodes never publish one room. Rooms left without a live lease (their node
died) are adopted by the least busy nodes with room to spare, and resume on the same URLs.

Cluster mode is on when `TOWNSQUARE_NODE_ID` is set; a single `townsquare up` runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from ingest.metrics import IngestMetrics
from registry import Lease, NodeInfo, Registry, RegistryError, RegistryUnavailable, RoomRecord
from serving.tasks import cancel_and_wait


class LeasedRoom(Protocol):
    """What the keeper reads of a room (`ingest.rooms.Room`)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    @property
    def on_air(self) -> bool: ...


R = TypeVar("R", bound=LeasedRoom)
T = TypeVar("T")


class RoomKeeper(Protocol[R]):
    """What the keeper asks of the rooms (`ingest.rooms.Rooms`)."""

    def all(self) -> Sequence[R]: ...

    async def lose(self, room: R) -> None: ...

    async def adopt(self, rec: RoomRecord) -> Lease | None: ...

log = logging.getLogger("townsquare.ingest.node")
ADOPT_EVERY = 0.25  # seconds between looks for rooms nobody holds
FENCE_EVERY = 0.1  # seconds between checks that the leases are still safe to publish under


class Node:
    def __init__(self, registry: Registry, node_id: str, internal_url: str, control_url: str,
                 rtmp_port: int, capacity: int, lease_seconds: float,
                 metrics: IngestMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics or IngestMetrics()
        self.id = node_id
        self.info = NodeInfo(node_id, internal_url, control_url, rtmp_port, 0, 0.0, capacity,
                             time.time(), False)
        self.ttl = lease_seconds
        self.rooms: RoomKeeper[Any] | None = None
        self.draining = False
        # Until when (monotonic) publishing is safe: two thirds of a lease after the start of
        # the last renewal that succeeded (the lease itself runs a full ttl from then).
        self._safe_until = time.monotonic() + lease_seconds * 2 / 3
        # Why the fence would act now: the last renewal's failure, or None when none failed
        # since the last success (the renewals are late, not refused).
        self._fence_reason: str | None = None
        self._renewed_at: float | None = None  # monotonic start of the last renewal that worked
        self._task: asyncio.Task[None] | None = None
        # The keeper's call to the database in flight, at most one: a call past its deadline
        # is cancelled and left to let go in its own time (see `_ask`).
        self._asking: asyncio.Task[Any] | None = None
        self._fence: asyncio.Task[None] | None = None
        # Adopting a room reads the store and the database and can take longer than a third
        # of a lease on a loaded machine: it runs beside the keeper, never in its way.
        self._adopting: asyncio.Task[None] | None = None
        self._cpu = (time.process_time(), time.monotonic())
        # Rooms whose lease was taken and that are not on air yet: when (monotonic) each was.
        self._taken: dict[str, float] = {}

    async def start(self, rooms: RoomKeeper[Any]) -> None:
        self.rooms = rooms
        await self.registry.register_node(self.info)
        self._safe_until = time.monotonic() + self.ttl * 2 / 3
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._keep(), name="node-keeper")
        self._fence = loop.create_task(self._watch(), name="node-fence")
        log.info("node %s in the cluster (%s), leases of %.1f s", self.id, self.info.internal_url,
                 self.ttl)

    async def take(self, name: str, go_live: str | None = None) -> Lease | None:
        started = time.monotonic()
        lease = await self.registry.take_room(name, self.id, self.ttl, go_live=go_live)
        if lease is not None:  # the database answered: this lease is safe as long as a renewal
            self._safe_until = max(self._safe_until, started + self.ttl * 2 / 3)
            self._taken[name] = started
        return lease

    async def confirm(self, name: str) -> bool:
        """Whether the lease of `name`, taken here and not yet on air, may still be published
        under. The keeper renews only rooms on air, so a lease whose room took long to put on
        air (store reads, the database, a loaded machine) may have lapsed meanwhile, and
        another node adopted it: one taken more than a third of a lease ago is renewed
        first, and False when that fails (the room is not put on air here). Raises
        RegistryError when the database cannot say."""
        taken = self._taken.pop(name, None)
        started = time.monotonic()
        if taken is None or started - taken < self.ttl / 3:
            return True
        renewed = await self.registry.renew_leases(self.id, [name], self.ttl)
        if name not in renewed:
            log.warning("room %s: its lease, taken %.1f s ago, lapsed before it was on air "
                        "here; left to the node that holds it now", name, started - taken)
            self.metrics.lease_losses.labels("lapsed").inc()
            return False
        self._safe_until = max(self._safe_until, started + self.ttl * 2 / 3)
        log.info("room %s: lease renewed before going on air (taken %.1f s ago)", name,
                 started - taken)
        return True

    def owned(self) -> list[Any]:
        assert self.rooms is not None
        # Every room this process publishes, whatever its state says: the keeper renews
        # exactly these and the fence stops exactly these.
        return [r for r in self.rooms.all() if r.on_air]

    async def stop(self) -> None:
        """Leave the cluster: stop keeping leases and hand every room back (released leases
        are adopted by the other nodes at once)."""
        self.draining = True
        await cancel_and_wait(self._task, self._fence, self._adopting)
        self._task = self._fence = self._adopting = None
        if self._asking is not None and not self._asking.done():
            # A call given up on (see `_ask`) is let go by the driver within the registry's
            # own timeouts. Waited for, not cancelled again: a second cancellation lands in
            # SQLAlchemy's shielded close of the connection and can leave it waiting forever
            # on an aiosqlite thread that has stopped.
            bound = self.registry.longest_call + 1.0
            done, _ = await asyncio.wait({self._asking}, timeout=bound)
            if not done:
                log.warning("node %s: a call to the rooms database did not let go within "
                            "%g s of stopping; left behind", self.id, bound)
        self._asking = None

    async def release(self, room: LeasedRoom) -> None:
        try:
            await self.registry.release_room(room.name, self.id, room.epoch)
        except RegistryError as exc:
            log.warning("room %s: lease not released (%s); it expires on its own", room.name, exc)

    def _load(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        used = (cpu - self._cpu[0]) / max(wall - self._cpu[1], 1e-3) / (os.cpu_count() or 1)
        self._cpu = (cpu, wall)
        return min(1.0, used)

    async def _keep(self) -> None:
        assert self.rooms is not None
        rooms = self.rooms
        next_renewal = time.monotonic()
        while True:
            # Orphans are looked for often (a cheap query), so that a room handed over by a
            # node that is stopping is back on air within a segment; leases every third.
            await asyncio.sleep(ADOPT_EVERY)
            if time.monotonic() < next_renewal:
                if not self.draining:
                    self._adopt_beside(len(self.owned()))
                continue
            started = time.monotonic()
            next_renewal = started + self.ttl / 3
            owned = self.owned()
            try:
                # No call may outlast the leases: a database that stops answering (a silent
                # partition) must not hold the keeper past the moment the fence acts.
                renewed = await self._ask(
                    self.registry.renew_leases(self.id, [r.name for r in owned], self.ttl),
                    max(0.1, self._safe_until - started + self.ttl / 3))
                self._safe_until = started + self.ttl * 2 / 3
                self._renewed_at, self._fence_reason = started, None
                took = time.monotonic() - started
                self.metrics.lease_renewal_seconds.set(took)
                if took > self.ttl / 6:
                    # Half the time a renewal has before the fence: worth a line in the log,
                    # beside the event loop's own stalls (`serving.lag`), to tell the two apart.
                    log.warning("node %s: a lease renewal took %.2f s (the fence acts %.1f s "
                                "after one starts)", self.id, took, self.ttl * 2 / 3)
                self.metrics.leases_held.set(len(renewed))
                await self._ask(
                    self.registry.heartbeat(self.id, len(owned), self._load(), self.draining),
                    self.ttl / 3)
            except (RegistryUnavailable, TimeoutError) as exc:
                self._fence_reason = str(exc) or "the rooms database did not answer in time"
                self.metrics.lease_renewal_failures.labels(
                    "timeout" if isinstance(exc, TimeoutError) else "unavailable").inc()
                continue
            except RegistryError as exc:
                log.error("node %s: %s", self.id, exc)
                self.metrics.lease_renewal_failures.labels("error").inc()
                continue
            for room in owned:
                if room.name not in renewed:
                    log.warning("room %s: lease lost to another node; stopped here", room.name)
                    self.metrics.lease_losses.labels("taken").inc()
                    await rooms.lose(room)
            if not self.draining:
                self._adopt_beside(len(renewed))

    async def _ask(self, call: Coroutine[Any, Any, T], seconds: float) -> T:
        """The keeper's call to the database, answered within `seconds` or TimeoutError.

        Not `asyncio.wait_for`: that waits for a cancelled call to finish, and a call stuck
        on a socket that stopped answering (a silent partition) may only let go once the
        network heals or the driver's own timeout fires, holding the keeper, and every
        failure it would count, until then. A late call here is cancelled once (so that a
        renewal still queued behind a lock does not commit late) and left to finish on its
        own; while it has not, no other call is made beside it, and each renewal due is
        counted as timed out."""
        if self._asking is not None and not self._asking.done():
            call.close()
            raise TimeoutError("the rooms database has not answered the last call yet")
        task = asyncio.get_running_loop().create_task(call, name="node-registry-call")
        self._asking = task
        task.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            task.cancel()
            raise TimeoutError(f"the rooms database did not answer within {seconds:.1f} s")
        return task.result()

    async def _watch(self) -> None:
        """The fence: stop publishing every room before the last lease renewed can expire
        (another node may take them then, and a room has one voice at a time), whatever
        the keeper is still waiting for."""
        assert self.rooms is not None
        while True:
            await asyncio.sleep(FENCE_EVERY)
            if time.monotonic() < self._safe_until:
                continue
            lost = self.owned()
            reason = self._why_fenced()
            for room in lost:
                log.error("room %s: lease not renewed (%s); stopped here", room.name, reason)
                self.metrics.lease_losses.labels("fence").inc()
                await self.rooms.lose(room)
            if lost:
                self.metrics.leases_held.set(len(self.owned()))

    def _why_fenced(self) -> str:
        if self._fence_reason is not None:
            return self._fence_reason
        if self._renewed_at is None:
            return "no renewal has finished yet"
        return (f"no renewal has finished since the one that started "
                f"{time.monotonic() - self._renewed_at:.1f} s ago")

    def has_room(self, owning: int) -> bool:
        return not self.draining and owning < self.info.capacity

    def _adopt_beside(self, owning: int) -> None:
        """Look for orphans in a task of its own, one look at a time, so that renewing the
        leases already held never waits for a room being put on air."""
        if self._adopting is None or self._adopting.done():
            self._adopting = asyncio.get_running_loop().create_task(
                self._adopt(owning), name="node-adopt")
            self._adopting.add_done_callback(_log_failure)

    async def _adopt(self, owning: int) -> None:
        assert self.rooms is not None
        # `asyncio.timeout`, not `wait_for`, which under Python 3.11 can drop the cancellation
        # of a node that stops (see `ingest.presence`), and this look would go on to take rooms.
        try:
            async with asyncio.timeout(self.ttl / 3):
                orphans = await self.registry.rooms_to_adopt()
            if not orphans:
                return
            # Orphans go to the least loaded nodes: the others leave them a moment first.
            async with asyncio.timeout(self.ttl / 3):
                alive = await self.registry.nodes(alive_within=self.ttl)
        except (RegistryError, TimeoutError):
            return
        rank = next((i for i, n in enumerate(alive) if n.id == self.id), len(alive))
        if rank > 0:
            await asyncio.sleep(min(rank * ADOPT_EVERY, self.ttl / 3))
        for rec in orphans:
            if owning >= self.info.capacity:
                return
            began = time.monotonic()
            try:
                # The rooms take the lease: one taking of a room at a time on this node.
                lease = await self.rooms.adopt(rec)
            except RegistryError:
                return
            if lease is None:
                continue  # another node was quicker, or a speaker's admission here
            owning += 1
            # The time its listeners wait on this node: the lease, the store's reads of where
            # the room stands, and the broadcast's start.
            took = time.monotonic() - began
            log.info("room %s adopted (its owner went away): epoch %d, on air %.2f s after "
                     "this node went to take it", rec.name, lease.epoch, took)
            self.metrics.rooms_adopted.inc()
            self.metrics.adoption_seconds.observe(took)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A call the keeper left behind fails unseen: what it raised was already counted as a
    timeout, and asyncio would otherwise log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("adopting rooms failed; looking again shortly", exc_info=exc)
