"""Rooms: who may publish (the key), who is speaking, and the broadcast they feed.

A room is created `waiting`. The first speaker to join starts its broadcast and its program
clock (`live`); from then on the program runs on its own timeline whether anyone speaks or
not, so speakers come, go and come back with the same key on one continuous timeline. The
room ends on request or once nobody has spoken for `idle_timeout` (`ended`: ENDLIST, the
recording kept); an ended room's key is dead, and its name may be used again.

Rooms live in the registry (a database: names, key hashes, state, epochs and the next media
sequence number, never keys). A restart or a crash does not end a room: `resume` puts every
room that was live back on air, on the same URLs and timeline, carrying silence or the hold
audio until its speakers reconnect with the keys they already have. Open rooms are also
held here in memory, so keys are checked and rooms run while the database is away; what
changes meanwhile waits in the `Ledger`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
from prometheus_client import Counter

from hls.names import check_room, epoch_id, new_broadcast_id
from ingest.display import default_speaker_name
from ingest.errors import (
    BadKey,
    RoomElsewhere,
    RoomEnded,
    RoomExists,
    RoomFull,
    RoomNotFound,
    Unavailable,
)
from ingest.jitter import Arrival, JitterBuffer, realise
from ingest.ledger import Ledger
from ingest.metrics import IngestMetrics
from ingest.mixer import Mixer, MixerInput, ProgramClock
from ingest.node import Node
from ingest.relay import RELAY_PATH, RelayLink, link_url, still_taken, tell_source
from ingest.stream_keys import hash_key, key_matches, new_key
from packager.ladder import SAMPLE_RATE
from packager.pipeline import EpochPlan, ResumePoint, plan_epoch
from packager.recording import EpochInfo
from packager.status import RoomFacts, SpeakerFacts, recording_of
from registry import (
    REVOKED_KEY_HASH,
    Lease,
    NodeInfo,
    NoSuchRoom,
    Registry,
    RegistryError,
    RoomClosed,
    RoomRecord,
    RoomTaken,
)

log = logging.getLogger("townsquare.ingest.rooms")

RoomState = Literal["waiting", "live", "ended"]
SpeakerKind = Literal["rtmp", "whip", "local", "relay"]
# How long a new room waits for the end of an old one of the same name to reach the registry.
NAME_REUSE_WAIT = 5.0
# Seconds between looks for the next owner of a room whose owner stopped taking a relay.
REHOME_EVERY = 0.25
# How long a speaker who arrives while their room is being resumed (after a restart), or
# stopped here (a hand-over, a lost lease), waits for that to be over; past it they are
# refused, and reconnect.
RESUME_WAIT_SECONDS = 30.0
# A room whose program stopped on its own goes back on air at once; if the epoch that put it
# back fails within RESTART_QUIET_SECONDS too, the next try waits, twice as long each time up
# to RESTART_MAX_DELAY (a fault that outlives one epoch, as a store that refuses everything).
RESTART_QUIET_SECONDS = 30.0
RESTART_MAX_DELAY = 30.0


class BroadcastSink(Protocol):
    broadcast_id: str
    wanted_changed: Callable[[], None] | None

    def feed(self, pcm: np.ndarray) -> None: ...

    def anchor(self, captured_at: float) -> bool: ...

    def samples_wanted(self) -> int: ...

    async def close(self) -> None: ...

    async def suspend(self) -> None: ...


class BroadcastStarter(Protocol):
    """What rooms need from the packager (`packager.pipeline.Packager`)."""

    async def resume_point(self, room: str, wait: float = ...) -> ResumePoint: ...

    def start_broadcast(self, room: str, plan: EpochPlan | None = None,
                        on_segment: Callable[[int], None] | None = None) -> BroadcastSink: ...

    async def repair(self, room: str, broadcast: str, epochs: tuple[EpochInfo, ...]) -> int: ...

    async def flush(self, deadline: float) -> bool: ...


@dataclass
class Speaker:
    id: str
    kind: SpeakerKind
    remote: str
    connected_at: float
    input: MixerInput
    disconnect: Callable[[], Awaitable[None]] | None = None
    relay: RelayLink | None = None  # set when the room is published by another node
    # The room's key generation when this speaker's stream key was accepted; None for
    # speakers no key admitted (local sources, relays from other nodes, which answer for
    # their own speakers).
    key_generation: int | None = None
    name: str = ""  # what listeners read (`ingest.display`)
    # A speaker relayed here: (the node they reached, their id there), told of mutes and
    # renames made here so that the state goes with the speaker when the room moves on.
    source: tuple[str, str] | None = None

    def push(self, audio: Arrival) -> None:
        """This speaker's next audio: samples, or a call that decodes them (run when the
        program reaches the moment it arrived, or at once when it goes to another node)."""
        if self.relay is not None:
            pcm = realise(audio)
            if pcm is not None:
                self.relay.push(pcm)
        else:
            self.input.buffer.arrive(audio, time.monotonic())

    def describe(self) -> dict[str, Any]:
        self.input.sync()  # the buffer as of now, not as of the last block rendered
        buf = self.input.buffer
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "remote": self.remote,
            "connected_at": _iso(self.connected_at),
            "muted": self.input.muted,
            "level_dbfs": round(self.input.level_dbfs, 1),
            "buffer_ms": round(buf.level * 1000 / SAMPLE_RATE, 1),
            "underruns": buf.stats.underruns,
        }


@dataclass
class Room:
    name: str
    key_hash: str
    created_at: float
    state: RoomState = "waiting"
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    broadcast_id: str | None = None
    epoch: int = 0  # the last epoch number handed out for this room
    next_msn: int = 1  # the media sequence number its next segment gets
    owner: str | None = None  # the node holding its lease, as last read (cluster mode)
    private: bool = False  # listeners need a signed token (`hls.tokens`)
    key_generation: int = 1  # grows with every rotation or revocation of the stream key
    title: str = ""
    description: str = ""
    speakers: dict[str, Speaker] = field(default_factory=dict)
    relayed: dict[str, Speaker] = field(default_factory=dict)  # heard on another node
    # Set once the stop of its epoch here (an end, a hand-over, a lost lease) is over; None
    # when no stop is under way (`stopping`).
    _stopped: asyncio.Event | None = None
    # Held from taking the room's lease to putting it on air (`Rooms.admit`, `Rooms.adopt`):
    # one taking at a time, or a speaker's admission and the keeper's adoption both take
    # the lease (the second bumping its epoch past the one put on air) and both try to put
    # the room on air.
    _taking: asyncio.Lock = field(default_factory=asyncio.Lock)
    _mixer: Mixer | None = None
    _clock: ProgramClock | None = None
    _broadcast: BroadcastSink | None = None
    _seq: int = 0
    _last_voice: float = 0.0  # monotonic time a speaker was last connected
    _restarted_at: float = -1e9  # monotonic time its program was last put back on air here
    _restart_delay: float = 0.0  # the wait before the last of those

    @property
    def on_air(self) -> bool:
        """This process publishes the room now."""
        return self._broadcast is not None

    @property
    def stopping(self) -> bool:
        """Its epoch here is being stopped: still on air until the encoders' last part, but
        taking no speakers (relays are refused; a speaker who reaches this node waits for
        the stop, `Rooms.speak`)."""
        return self._stopped is not None

    def describe(self) -> dict[str, Any]:
        now = time.time()
        duration = None
        if self.started_at is not None:
            duration = round((self.ended_at or now) - self.started_at, 3)
        program = None
        if self._clock is not None:
            program = round(self._clock.stats.samples / SAMPLE_RATE, 3)
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "state": self.state,
            "live": self.state == "live",
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "duration_seconds": duration,
            "program_seconds": program,
            "broadcast_id": self.broadcast_id,
            "epoch": self.epoch,
            "node": self.owner,
            "next_msn": self.next_msn,
            "private": self.private,
            "key_generation": self.key_generation,
            "key_revoked": self.key_hash == REVOKED_KEY_HASH,
            "speakers": [s.describe() for s in self.speakers.values()],
        }

    def speaker_names(self) -> tuple[str, ...]:
        """Display names of the speakers mixed here, in the order they joined."""
        return tuple(s.name for s in self.speakers.values())

    def facts(self) -> RoomFacts:
        """What the room's status object says: who speaks is known only while it is on air
        here (this node mixes its speakers)."""
        speakers: tuple[SpeakerFacts, ...] = ()
        if self._mixer is not None:
            mixer = self._mixer
            speakers = tuple(SpeakerFacts(s.id, s.name, mixer.speaking(s.input), s.input.muted)
                             for s in self.speakers.values())
        return RoomFacts(
            room=self.name, title=self.title, description=self.description, state=self.state,
            since=self.started_at, ended_at=self.ended_at if self.state == "ended" else None,
            speakers=speakers, recording=recording_of(self.name, self.broadcast_id,
                                                      self.started_at))


@dataclass(frozen=True)
class RoomPolicy:
    idle_timeout: float = 600.0
    hold: np.ndarray | None = None  # program audio looped while nobody is connected
    max_speakers: int = 16
    jitter_ms: dict[str, float] = field(
        default_factory=lambda: {"rtmp": 200.0, "whip": 100.0, "local": 100.0,
                                 "relay": 250.0}
    )


class Rooms:
    """Every room this service knows, and the single place rooms change state."""

    def __init__(
        self,
        packager: BroadcastStarter,
        registry: Registry | None,
        metrics: IngestMetrics | None = None,
        policy: RoomPolicy | None = None,
    ) -> None:
        self.packager = packager
        self.registry = registry
        self.policy = policy or RoomPolicy()
        self.metrics = metrics or IngestMetrics()
        self.ledger = Ledger()
        self.node: Node | None = None  # set in cluster mode: rooms are published under leases
        self.relay_token: str | None = None  # what relays to other nodes authenticate with
        # Registered on the service's own metrics registry, beside IngestMetrics' counters.
        self.key_changes = Counter("townsquare_ingest_key_changes", "Stream keys changed, by "
                                   "change (rotate, revoke)", ["change"],
                                   registry=self.metrics.registry)
        self.key_disconnects = Counter("townsquare_ingest_key_disconnects", "Speakers "
                                       "disconnected because their stream key stopped counting",
                                       registry=self.metrics.registry)
        self.relayed_changes = Counter(
            "townsquare_ingest_relayed_speaker_changes", "Mutes and renames of speakers relayed "
            "here from another node, by whether that node was told (told, untold)",
            ["outcome"], registry=self.metrics.registry)
        self._rooms: dict[str, Room] = {}
        self._ending: set[asyncio.Task[Any]] = set()
        # Rooms that were live when this process started, until `resume` has put each back on
        # air (or failed to): a speaker who reconnects first waits for it, so the room goes on
        # with its broadcast instead of starting a new one.
        self._resuming: dict[str, asyncio.Event] = {}
        self._closing = False  # the service is shutting down: no room goes back on air

    @property
    def node_id(self) -> str | None:
        """This node's id in a cluster; None for a single node."""
        return self.node.id if self.node is not None else None

    # --- start-up ---------------------------------------------------------------------
    async def load(self) -> list[Room]:
        """Read the open rooms from the registry; returns those that were live, to be
        handed to `resume`: until it has put each back on air, a speaker of one waits."""
        if self.registry is None:
            return []
        try:
            records = await self.registry.open_rooms()
        except RegistryError as exc:
            raise Unavailable(f"cannot read rooms from {self.registry.describe()}: {exc}") from exc
        for rec in records:
            self._rooms[rec.name] = Room(
                rec.name, rec.key_hash, rec.created_at, state="waiting",
                started_at=rec.started_at, broadcast_id=rec.broadcast_id, epoch=rec.epoch,
                next_msn=rec.next_msn, owner=rec.owner, private=rec.private,
                key_generation=rec.key_generation, title=rec.title, description=rec.description)
        live = [self._rooms[r.name] for r in records if r.state == "live"]
        self._resuming.update((room.name, asyncio.Event()) for room in live)
        return live

    async def resume(self, rooms: list[Room]) -> None:
        """Put rooms that were live back on air where their timeline stopped (in cluster
        mode, those this node held or nobody holds; the others are another node's)."""
        for room in rooms:
            try:
                if self.node is not None:
                    if room.owner in (None, self.node.id):
                        await self.admit(room)
                else:
                    await self._resume(room)
            except RoomElsewhere:
                log.info("room %s is on air on another node", room.name)
            except Exception:
                log.exception("room %s: could not be resumed", room.name)
            finally:
                resumed = self._resuming.pop(room.name, None)
                if resumed is not None:
                    resumed.set()
        for rest in self._resuming.values():  # loaded live, not handed here: nothing to wait
            rest.set()
        self._resuming.clear()

    # --- cluster mode -----------------------------------------------------------------
    async def find(self, name: str) -> Room:
        """The room by name, read from the registry when another node created it."""
        room = self._rooms.get(name)
        if room is None and self.registry is not None:
            try:
                rec = await self.registry.get_room(name)
            except RegistryError as exc:
                raise Unavailable(f"room {name!r} cannot be looked up now: {exc}") from exc
            if rec is not None and rec.state != "ended":
                room = self._remember(rec)
        if room is None:
            raise RoomNotFound(f"no room named {name!r}")
        return room

    async def refresh(self, room: Room) -> None:
        """In cluster mode, read what the registry says of a room another node may publish:
        its state and which node holds its lease now."""
        if self.node is None or self.registry is None or room.on_air:
            return
        try:
            # The owner first: a lease taken after this read shows in neither, and one taken
            # before it has its new epoch in the record read next (one UPDATE writes both).
            # The other way round, a take between the reads showed its node with the epoch
            # before it (a clean run's clock-skew drill read that).
            owner = await self.registry.owner_of(room.name)
            rec = await self.registry.get_room(room.name)
        except RegistryError:
            return  # what was last read stands
        if room.on_air:
            # It went on air here while the database was read: what was read is older than
            # what this node now knows (a "waiting" read over a live room would hide it from
            # the lease keeper and the fence).
            return
        if rec is not None:
            room.state, room.started_at, room.broadcast_id = rec.state, rec.started_at, \
                rec.broadcast_id
            room.ended_at, room.end_reason = rec.ended_at, rec.end_reason
            room.epoch, room.next_msn = rec.epoch, rec.next_msn
            room.private = rec.private
            room.title, room.description = rec.title, rec.description
            await self._apply_key(room, rec.key_hash, rec.key_generation)
        room.owner = owner.node if owner is not None else None

    async def load_open(self) -> None:
        """In cluster mode, learn the open rooms other nodes created; refresh the state of
        those this node does not publish."""
        if self.node is None or self.registry is None:
            return
        try:
            records = await self.registry.open_rooms()
        except RegistryError as exc:
            raise Unavailable(f"rooms cannot be listed now: {exc}") from exc
        for rec in records:
            room = self._rooms.get(rec.name)
            if room is None:
                self._remember(rec)
            elif not room.on_air:
                await self.refresh(room)

    async def find_by_key(self, key: str) -> Room:
        """`by_key`, falling back on the registry for rooms created on another node. In
        cluster mode the registry speaks first (another node may have rotated or revoked the
        key); what is held in memory answers only while the database cannot."""
        if self.node is not None and self.registry is not None:
            try:
                rec = await self.registry.room_by_key(hash_key(key))
            except RegistryError:
                return self.by_key(key)
            if rec is None:
                raise BadKey("stream key matches no open room")
            room = self._rooms.get(rec.name)
            if room is None:
                return self._remember(rec)
            await self._apply_key(room, rec.key_hash, rec.key_generation)
            return room
        try:
            return self.by_key(key)
        except BadKey:
            if self.registry is None:
                raise
        try:
            rec = await self.registry.room_by_key(hash_key(key))
        except RegistryError as exc:
            raise Unavailable(f"stream keys cannot be checked now: {exc}") from exc
        if rec is None:
            raise BadKey("stream key matches no open room")
        return self._remember(rec)

    def _remember(self, rec: RoomRecord) -> Room:
        room = Room(rec.name, rec.key_hash, rec.created_at, state=rec.state,
                    started_at=rec.started_at, broadcast_id=rec.broadcast_id, epoch=rec.epoch,
                    next_msn=rec.next_msn, owner=rec.owner, private=rec.private,
                    key_generation=rec.key_generation, title=rec.title,
                    description=rec.description)
        self._rooms[rec.name] = room
        return room

    async def admit(self, room: Room) -> None:
        """Make sure this node publishes `room` before a speaker joins it here: take its
        lease (a waiting room goes live with it) and put it on air. RoomElsewhere when
        another node holds it. Nothing to do outside cluster mode."""
        if self.node is None or room.on_air:
            return
        async with room._taking:
            if room.on_air:
                return  # another admission, or an adoption, put it on air meanwhile
            if room.state == "ended":
                raise RoomEnded(f"room {room.name!r} has ended")
            owning = sum(r.on_air for r in self._rooms.values())
            if not self.node.has_room(owning):
                raise RoomFull(f"node {self.node.id} publishes {owning} rooms, its capacity; "
                               "this room can go on air on another node")
            bid = new_broadcast_id(time.time()) if room.state == "waiting" else None
            await self._read_info(room)
            try:
                lease = await self.node.take(room.name, go_live=bid)
            except RegistryError as exc:
                raise Unavailable(f"room {room.name!r} cannot be taken now: {exc}") from exc
            if lease is None:
                owner = await self.registry.owner_of(room.name) if self.registry else None
                raise RoomElsewhere(f"room {room.name!r} is on air on node "
                                    f"{owner.node if owner else 'another node'}")
            try:
                on_air = await self._on_air_leased(room, lease)
            except RegistryError as exc:
                raise Unavailable(f"room {room.name!r} cannot be taken now: {exc}") from exc
            if not on_air:
                raise RoomElsewhere(f"room {room.name!r} went to another node while it was "
                                    "being put on air here")

    async def adopt(self, rec: RoomRecord) -> Lease | None:
        """Take the lease of a room whose node went away and put it on air here, on its
        timeline. None, changing nothing, when another node was quicker or this node
        publishes it already (a speaker's admission took it meanwhile). Raises
        RegistryError when the lease cannot be asked for."""
        assert self.node is not None
        room = self._rooms.get(rec.name) or self._remember(rec)
        async with room._taking:
            if room.on_air:
                return None
            lease = await self.node.take(rec.name)
            if lease is None:
                return None
            room.state = "live"
            room.title, room.description = rec.title, rec.description
            return lease if await self._on_air_leased(room, lease) else None

    async def _on_air_leased(self, room: Room, lease: Lease) -> bool:
        """Put `room` on air under `lease`, just taken; False when the lease ran out before
        it was (`Node.confirm`): another node takes it, or has."""
        assert self.node is not None
        resumed = room.state == "live"
        if resumed:
            # Not on air yet, the lease is not renewed: the store (its recovery, a read it
            # fails) is waited for a third of it at most, like one renewal's round.
            point = await self.packager.resume_point(room.name, self.node.ttl / 3)
            prior = await self._prior_epochs(room.name, lease.broadcast_id, lease.epoch)
        else:
            point, prior = ResumePoint(), ()
        plan = plan_epoch(point, lease.broadcast_id, lease.epoch, lease.next_msn, prior)
        # The lease's epoch is the fencing number: the epoch folder must carry it.
        plan = replace(plan, number=lease.epoch)
        if not await self.node.confirm(room.name):
            return False
        room.owner = self.node.id
        self._go_live(room, plan, resumed=resumed, recorded=True)
        self._repair(room, plan)
        return True

    async def _read_info(self, room: Room) -> None:
        """The room's title and description as the registry has them now (another node may
        have changed them since this one read the room); what is known stands if it cannot
        be read (the database down must not keep a speaker off the air)."""
        if self.registry is None:
            return
        try:
            rec = await self.registry.get_room(room.name)
        except RegistryError:
            return
        if rec is not None:
            room.title, room.description = rec.title, rec.description

    def _repair(self, room: Room, plan: EpochPlan) -> None:
        """The epoch a crash cut short has an index behind its segments: rebuild it."""
        if plan.prior:
            self._spawn(self.packager.repair(room.name, plan.broadcast, plan.prior),
                        f"repair-{room.name}")

    async def _prior_epochs(self, name: str, broadcast: str | None,
                            below: int | None = None) -> tuple[EpochInfo, ...]:
        """The registry's epochs of a broadcast (below epoch `below`); () when unknown, and
        the store's epochs.json then speaks for them."""
        if self.registry is None or broadcast is None:
            return ()
        try:
            return tuple(EpochInfo(epoch_id(e.epoch, e.broadcast_id), e.started_at, e.first_msn)
                         for e in await self.registry.epochs(name, broadcast)
                         if below is None or e.epoch < below)
        except RegistryError as exc:
            log.warning("room %s: earlier epochs unknown (%s); using the store's", name, exc)
            return ()

    async def lose(self, room: Room) -> None:
        """Stop publishing a room whose lease this node no longer holds (it stays live:
        its new owner carries it on)."""
        if room.on_air:
            await self._stop_room(room, end=False)
            self.metrics.rooms_live.dec()

    async def _resume(self, room: Room) -> None:
        point = await self.packager.resume_point(room.name)
        prior = await self._prior_epochs(room.name, room.broadcast_id)
        plan = plan_epoch(point, room.broadcast_id, room.epoch + 1, room.next_msn, prior)
        self._go_live(room, plan, resumed=True)
        self._repair(room, plan)

    # --- lookup -----------------------------------------------------------------------
    def get(self, name: str) -> Room:
        room = self._rooms.get(name)
        if room is None:
            raise RoomNotFound(f"no room named {name!r}")
        return room

    def all(self) -> list[Room]:
        return list(self._rooms.values())

    def by_key(self, key: str) -> Room:
        """The open room this key belongs to. Every room is compared: no early exit."""
        found = None
        for room in self._rooms.values():
            if key_matches(key, room.key_hash) and room.state != "ended":
                found = room
        if found is None:
            raise BadKey("stream key matches no open room")
        return found

    def check_key(self, name: str, key: str) -> Room:
        room = self._rooms.get(name)
        # Compare even for an unknown room, so timing tells nothing about which rooms exist.
        ok = key_matches(key, room.key_hash if room else "0" * 64)
        if room is None or not ok:
            raise BadKey(f"stream key is not valid for room {name!r}")
        if room.state == "ended":
            raise RoomEnded(f"room {name!r} has ended")
        return room

    # --- lifecycle --------------------------------------------------------------------
    async def create(self, name: str | None = None, private: bool = False, title: str = "",
                     description: str = "") -> tuple[Room, str]:
        """A new waiting room and its stream key (shown once). `title` and `description` must
        have passed `ingest.display`'s checks."""
        name = check_room(name) if name is not None else "room-" + secrets.token_hex(4)
        old = self._rooms.get(name)
        if old is not None and old.state != "ended":
            raise RoomExists(f"room {name!r} already exists ({old.state}); end it first")
        key = new_key()
        room = Room(name=name, key_hash=hash_key(key), created_at=time.time(), private=private,
                    title=title, description=description)
        if self.registry is not None:
            if old is not None and self.ledger.pending:
                # The old room's end goes to the registry behind the request that ended it;
                # until it is written there the name is still taken. Wait for it, briefly.
                await self.ledger.flush(NAME_REUSE_WAIT, "for a room's name to be reused")
            try:
                rec = await self.registry.create_room(name, room.key_hash, room.created_at,
                                                      private, title, description)
            except RoomTaken as exc:
                raise RoomExists(f"room {name!r} already exists; end it first") from exc
            except RegistryError as exc:
                raise Unavailable(f"rooms cannot be created now: {exc}") from exc
            room.epoch, room.next_msn = rec.epoch, rec.next_msn
            room.key_generation = rec.key_generation
        elif old is not None:
            room.epoch, room.next_msn = old.epoch, old.next_msn
            room.key_generation = old.key_generation + 1
        self._rooms[name] = room
        self.metrics.rooms_created.inc()
        log.info("room %s created", name)
        return room, key

    def join(
        self,
        room: Room,
        kind: SpeakerKind,
        remote: str,
        disconnect: Callable[[], Awaitable[None]] | None = None,
        name: str | None = None,
    ) -> Speaker:
        """A speaker mixed into `room` here; `name` (checked by `ingest.display`) is what
        listeners read, a numbered default when None or empty."""
        if room.state == "ended":
            raise RoomEnded(f"room {room.name!r} has ended")
        if room.stopping:  # `speak` waits for the stop; a caller straight here is refused
            raise Unavailable(f"room {room.name!r} is being stopped here; try again")
        if len(room.speakers) >= self.policy.max_speakers:
            raise RoomFull(f"room {room.name!r} has {self.policy.max_speakers} speakers already")
        if self.node is not None and not room.on_air:
            raise RoomElsewhere(f"room {room.name!r} is not on air on this node")
        if room.state == "waiting":
            self._go_live(room, plan_epoch(ResumePoint(), new_broadcast_id(time.time()),
                                           room.epoch + 1, room.next_msn))
        room._seq += 1
        sid = f"{kind}-{room._seq}"
        speaker = Speaker(sid, kind, remote, time.time(), self._mix_input(room, sid, kind),
                          disconnect, name=name or default_speaker_name(room._seq))
        self._seat(room, speaker)
        log.info("room %s: speaker %s joined from %s", room.name, sid, remote)
        return speaker

    def _mix_input(self, room: Room, sid: str, kind: SpeakerKind) -> MixerInput:
        """A place in the room's mix, behind a jitter buffer sized for `kind`."""
        assert room._mixer is not None
        return room._mixer.add(sid, JitterBuffer(target_ms=self.policy.jitter_ms.get(kind, 120.0)))

    def _remix(self, room: Room, speaker: Speaker) -> None:
        """Give `speaker` a place in the room's current mix, muted or not as before."""
        muted = speaker.input.muted
        speaker.input = self._mix_input(room, speaker.id, speaker.kind)
        speaker.input.mute(muted)

    def _seat(self, room: Room, speaker: Speaker) -> None:
        """Count a speaker mixed here among the room's speakers."""
        room.speakers[speaker.id] = speaker
        room._last_voice = time.monotonic()
        self.metrics.speakers.inc()

    async def speak(self, room: Room, kind: SpeakerKind, remote: str,
                    disconnect: Callable[[], Awaitable[None]] | None = None,
                    name: str | None = None) -> Speaker:
        """A speaker for `room`: mixed here when this node publishes the room (or can take
        it), relayed to the node that does otherwise (cluster mode). Call it right after the
        speaker's key was checked: the speaker is tied to the key generation of that moment."""
        generation = room.key_generation
        # The room was live before this process started and is being put back on air: joined
        # now, the speaker would start a new broadcast under the one being resumed.
        await _settled(self._resuming.get(room.name), f"room {room.name!r} is still being "
                       "resumed; try again")
        # Its epoch here is being stopped (a lost lease, a hand-over): joined now, the speaker
        # would stay behind in a room nothing mixes. Once stopped, the room is taken again
        # or the speaker relayed to where it went.
        await _settled(room._stopped, f"room {room.name!r} is still being stopped; try again")
        try:
            await self.admit(room)
            joined = self.join(room, kind, remote, disconnect, name)
            joined.key_generation = generation
            return joined
        except RoomElsewhere:
            if self.node is None or self.registry is None or self.relay_token is None:
                raise
            url = await self._relay_url(room)
            if url is None:
                raise
        room._seq += 1
        speaker = Speaker(f"{kind}-{room._seq}-relayed", kind, remote, time.time(),
                          MixerInput(JitterBuffer()), disconnect, key_generation=generation,
                          name=name or default_speaker_name(room._seq))
        room.relayed[speaker.id] = speaker
        self._relay(room, speaker, url)
        log.info("room %s: speaker %s from %s relayed to %s", room.name, speaker.id, remote, url)
        return speaker

    def _relay(self, room: Room, speaker: Speaker, url: str) -> None:
        """Stream `speaker` to the room's owner at `url` (its relay path); when that link
        ends while the speaker is still here, the speaker is carried to the next owner."""
        assert self.relay_token is not None

        def link_closed() -> None:
            if room.relayed.get(speaker.id) is speaker:  # not left meanwhile
                self._spawn(self._rehome(room, speaker, url), f"relay-rehome-{room.name}")

        # The owner mixes the speaker: their name and whether they are muted travel with the
        # relay, and where they come from, so that the owner can tell this node of changes.
        assert self.node is not None
        speaker.relay = RelayLink(
            link_url(url, speaker.name, self.node.id, speaker.id, speaker.input.muted),
            self.relay_token, link_closed)

    async def _rehome(self, room: Room, speaker: Speaker, gone: str) -> None:
        """The owner a speaker was relayed to stopped taking them (it is handing the room
        over, or it died): carry the speaker on without a reconnect, into this node's mix
        if this node takes the room, else to its next owner. The speaker is disconnected (and
        reconnects as before) when the owner removed them on purpose (it still takes relays),
        the room ended, or no owner turns up within two leases."""
        assert self.node is not None and self.relay_token is not None
        token = self.relay_token
        deadline = time.monotonic() + 2 * self.node.ttl
        while room.relayed.get(speaker.id) is speaker and time.monotonic() < deadline:
            try:
                await self.admit(room)
                self._mix_here(room, speaker)
                return
            except RoomElsewhere:
                url = await self._relay_url(room)
                if url is not None and url != gone:
                    self._relay(room, speaker, url)
                    log.info("room %s: speaker %s relayed on to %s", room.name, speaker.id, url)
                    return
                if url is None and await self._ended_elsewhere(room):
                    break
                if url == gone and await still_taken(gone, token):
                    log.info("room %s: speaker %s removed by the room's owner", room.name,
                             speaker.id)
                    break
            except (RoomEnded, RoomFull, Unavailable) as exc:
                log.info("room %s: speaker %s not carried on: %s", room.name, speaker.id, exc)
                break
            except Exception:  # any other failure: the speaker is disconnected, never stranded
                log.exception("room %s: carrying speaker %s on failed", room.name, speaker.id)
                break
            await asyncio.sleep(REHOME_EVERY)
        if room.relayed.pop(speaker.id, None) is not None and speaker.disconnect:
            await speaker.disconnect()  # it reconnects, and lands anew

    async def _ended_elsewhere(self, room: Room) -> bool:
        """Whether the registry says `room` has ended (its owner ended it)."""
        assert self.registry is not None
        try:
            rec = await self.registry.get_room(room.name)
        except RegistryError:
            return False
        return rec is not None and rec.state == "ended"

    def _mix_here(self, room: Room, speaker: Speaker) -> None:
        """A relayed speaker whose room this node now publishes: into the mix here."""
        if room.relayed.get(speaker.id) is not speaker:
            return
        if len(room.speakers) >= self.policy.max_speakers:
            raise RoomFull(f"room {room.name!r} has {self.policy.max_speakers} speakers already")
        del room.relayed[speaker.id]
        self._remix(room, speaker)  # muted as the last owner told it
        speaker.relay = None
        self._seat(room, speaker)
        log.info("room %s: speaker %s mixed here now (the room came to this node)", room.name,
                 speaker.id)

    def _spawn(self, work: Coroutine[Any, Any, object], name: str) -> None:
        # The coroutine itself, not one awaiting it: a task cancelled before it ran (the
        # service closing) then closes it, where the wrapper left it never awaited.
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def owner_api(self, room: Room) -> str | None:
        """The control API of the node publishing `room`, when that is another node."""
        if self.node is None or room.on_air:
            return None
        url = await self._relay_url(room)
        return url[: -len(RELAY_PATH + room.name)] if url else None

    async def _relay_url(self, room: Room) -> str | None:
        assert self.registry is not None
        try:
            owner = await self.registry.owner_of(room.name)
            if owner is None:
                return None
            node = await self._node(owner.node)
        except RegistryError:
            return None
        return f"{node.control_url.rstrip('/')}{RELAY_PATH}{room.name}" if node else None

    async def _node(self, node_id: str) -> NodeInfo | None:
        """A node of the directory by id (None: not in it); raises RegistryError."""
        assert self.registry is not None
        return next((n for n in await self.registry.nodes() if n.id == node_id), None)

    def leave(self, room: Room, speaker: Speaker) -> None:
        if speaker.relay is not None:
            if room.relayed.pop(speaker.id, None) is not None:
                self._spawn(speaker.relay.close(), f"relay-close-{room.name}")
            return
        if room.speakers.pop(speaker.id, None) is None:
            return
        if room._mixer is not None:
            room._mixer.remove(speaker.id)
        stats = speaker.input.buffer.stats
        self.metrics.jitter_underruns.inc(stats.underruns)
        self.metrics.jitter_dropped.inc(stats.dropped_samples)
        self.metrics.jitter_corrected.inc(stats.corrected_blocks)
        self.metrics.jitter_admitted_early.inc(stats.admitted_early)
        room._last_voice = time.monotonic()
        self.metrics.speakers.dec()
        log.info("room %s: speaker %s left", room.name, speaker.id)

    # --- stream keys ------------------------------------------------------------------
    async def replace_key(self, room: Room, revoke: bool = False) -> str | None:
        """Rotate the room's stream key (the new key is returned, shown once) or revoke it
        (None: no key works until the next rotation). The old key stops working at once and
        the speakers it admitted here are disconnected; in a cluster the caller tells the
        other nodes (`sync_key`), whose speakers it may also have admitted.

        The registry is written before anything changes here (Unavailable when it cannot
        be): a key change that other nodes could not see would not be a revocation.
        """
        if room.state == "ended":
            raise RoomEnded(f"room {room.name!r} has ended: its key is dead already")
        key = None if revoke else new_key()
        key_hash = REVOKED_KEY_HASH if key is None else hash_key(key)
        generation = room.key_generation + 1
        if self.registry is not None:
            try:
                rec = await self.registry.replace_key(room.name, key_hash)
            except RoomClosed as exc:
                raise RoomEnded(f"room {room.name!r} has ended: its key is dead already") from exc
            except NoSuchRoom as exc:
                raise RoomNotFound(f"no room named {room.name!r}") from exc
            except RegistryError as exc:
                raise Unavailable(f"the key of room {room.name!r} cannot be changed now: "
                                  f"{exc}") from exc
            generation = rec.key_generation
        self.key_changes.labels(change="revoke" if revoke else "rotate").inc()
        log.info("room %s: stream key %s (generation %d)", room.name,
                 "revoked" if revoke else "rotated", generation)
        await self._apply_key(room, key_hash, generation)
        return key

    async def sync_key(self, room: Room) -> int:
        """Read the room's key from the registry (another node changed it) and disconnect the
        speakers an older key admitted here. Returns how many were disconnected."""
        if self.registry is None:
            return 0
        try:
            rec = await self.registry.get_room(room.name)
        except RegistryError as exc:
            raise Unavailable(f"room {room.name!r} cannot be read now: {exc}") from exc
        if rec is None:
            return 0
        return await self._apply_key(room, rec.key_hash, rec.key_generation)

    async def _apply_key(self, room: Room, key_hash: str, generation: int) -> int:
        """Make `generation` the room's key here; disconnect every speaker an older key
        admitted, on this node's mix or relayed from it. Returns how many."""
        if generation < room.key_generation:
            return 0  # an older read arriving late: the newer key stands
        room.key_hash, room.key_generation = key_hash, generation
        stale = [s for s in (*room.speakers.values(), *room.relayed.values())
                 if s.key_generation is not None and s.key_generation < generation]
        for speaker in stale:
            await self._drop(room, speaker)
            log.info("room %s: speaker %s disconnected: its stream key no longer counts",
                     room.name, speaker.id)
        if stale:
            self.key_disconnects.inc(len(stale))
        return len(stale)

    async def mute(self, room: Room, speaker_id: str, muted: bool) -> Speaker:
        """Mute or unmute a speaker mixed here (and tell the node they are relayed from)."""
        speaker = room.speakers.get(speaker_id)
        if speaker is None:
            raise RoomNotFound(f"room {room.name!r} has no speaker {speaker_id!r}")
        speaker.input.mute(muted)
        await self._tell_source(room, speaker, {"muted": muted})
        return speaker

    async def rename(self, room: Room, speaker_id: str, name: str) -> Speaker:
        """Give a speaker mixed here a new display name (checked by `ingest.display`)."""
        speaker = room.speakers.get(speaker_id)
        if speaker is None:
            raise RoomNotFound(f"room {room.name!r} has no speaker {speaker_id!r}")
        speaker.name = name
        await self._tell_source(room, speaker, {"name": name})
        return speaker

    async def _tell_source(self, room: Room, speaker: Speaker, change: dict[str, Any]) -> None:
        """A speaker relayed here from another node changed here: tell that node, which holds
        their connection and carries their state on when the room moves. The change holds
        here either way; a node that cannot be told is logged and counted."""
        if speaker.source is None or self.registry is None or self.relay_token is None:
            return
        node_id, their_id = speaker.source
        try:
            node = await self._node(node_id)
        except RegistryError as exc:
            node, outcome = None, f"the node directory cannot be read: {exc}"
        else:
            outcome = "not in the node directory"
        if node is not None:
            outcome = await tell_source(node.control_url, room.name, their_id,
                                        self.relay_token, change)
        self.relayed_changes.labels("told" if outcome == "ok" else "untold").inc()
        if outcome != "ok":
            log.warning("room %s: node %s was not told that relayed speaker %s changed (%s): "
                        "%s; it holds here until the room moves", room.name, node_id,
                        speaker.id, change, outcome)

    def relayed_changed(self, room: Room, speaker_id: str, muted: bool | None = None,
                        name: str | None = None) -> bool:
        """The owner changed a speaker relayed from here: remember it for when the room
        moves. False when no such speaker is relayed from here (any more)."""
        speaker = room.relayed.get(speaker_id)
        if speaker is None:
            return False
        if muted is not None:
            speaker.input.mute(muted)  # not in any mix here: only remembered
        if name is not None:
            speaker.name = name
        return True

    async def set_info(self, room: Room, title: str | None = None,
                       description: str | None = None) -> None:
        """Change the room's title and description (None: unchanged; both checked by
        `ingest.display`). The registry is written first (Unavailable when it cannot be),
        so every node and the directory read the same."""
        if self.registry is not None:
            try:
                rec = await self.registry.set_room_info(room.name, title, description)
            except NoSuchRoom as exc:
                raise RoomNotFound(f"no room named {room.name!r}") from exc
            except RegistryError as exc:
                raise Unavailable(f"room {room.name!r} cannot be changed now: {exc}") from exc
            room.title, room.description = rec.title, rec.description
            return
        if title is not None:
            room.title = title
        if description is not None:
            room.description = description

    def room_facts(self, name: str) -> RoomFacts | None:
        """The status facts of a room this process holds (`packager.status.StatusFeed`);
        None for any other."""
        room = self._rooms.get(name)
        return room.facts() if room is not None else None

    async def remove(self, room: Room, speaker_id: str) -> None:
        speaker = room.speakers.get(speaker_id)
        if speaker is None:
            raise RoomNotFound(f"room {room.name!r} has no speaker {speaker_id!r}")
        self.leave(room, speaker)
        if speaker.disconnect is not None:
            await speaker.disconnect()

    async def end(self, room: Room, reason: str = "ended by request") -> None:
        """End a room for good: ENDLIST, a complete recording, its key dead."""
        if room.state == "ended":
            return
        was_live = room.state == "live"
        room.state = "ended"
        room.ended_at = time.time()
        room.end_reason = reason
        ended_at = room.ended_at
        if self.registry is not None:
            registry = self.registry
            self.ledger.append(f"end {room.name}",
                               lambda: registry.end_room(room.name, ended_at, reason))
        await self._stop_room(room, end=True)
        if was_live:
            self.metrics.rooms_live.dec()
        self.metrics.rooms_ended.labels(reason="idle" if "idle" in reason else "request").inc()
        log.info("room %s ended: %s", room.name, reason)

    async def _drop(self, room: Room, speaker: Speaker) -> None:
        """Take a speaker out of the mix and close its connection, if it has one."""
        self.leave(room, speaker)
        if speaker.disconnect is not None:
            try:
                await speaker.disconnect()
            except Exception:
                log.exception("room %s: disconnecting %s failed", room.name, speaker.id)

    async def _stop_room(self, room: Room, end: bool) -> None:
        # Marked first: a relaying node whose speaker is let go below asks this node at once
        # whether it still takes relays, and a yes would tell it the speaker was removed.
        stopped = room._stopped = asyncio.Event()
        try:
            for speaker in list(room.speakers.values()):
                await self._drop(room, speaker)
            if room._clock is not None:
                await room._clock.stop()
                room._clock = None
            room._mixer = None
            broadcast, room._broadcast = room._broadcast, None
        finally:
            room._stopped = None
            stopped.set()
        if broadcast is not None:
            await self._stop_broadcast(room, broadcast, end)

    async def _stop_broadcast(self, room: Room, broadcast: BroadcastSink, end: bool,
                              failed: bool = False) -> None:
        """Close or suspend the epoch `broadcast` carried, and tell the registry it ended.
        `failed`: it ended on a failure already logged, which its stop raises again."""
        try:
            await (broadcast.close() if end else broadcast.suspend())
        except Exception as exc:
            if failed:
                log.info("room %s: its failed epoch %d stopped (%s)", room.name, room.epoch, exc)
            else:
                log.exception("room %s: stopping the broadcast failed", room.name)
        if self.registry is not None:
            registry, epoch, now = self.registry, room.epoch, time.time()
            self.ledger.append(f"end epoch {room.epoch} of {room.name}",
                               lambda: registry.end_epoch(room.name, epoch, now))

    # --- a program that stopped on its own ----------------------------------------------
    def _program_stopped(self, room: Room, broadcast: BroadcastSink, exc: Exception) -> None:
        """The clock of `room` stopped because `broadcast` refused audio while nobody was
        stopping it: its encoder or its publishing failed, and the epoch is over. The room
        would stay live with nothing heard, so it goes back on air here in a new epoch,
        its speakers kept (`_restart`)."""
        if room._broadcast is not broadcast or room.stopping or room.state != "live" \
                or self._closing:
            return  # a stop under way refused it, or the epoch was replaced already
        log.error("room %s: its program stopped (%s); putting it back on air in a new epoch",
                  room.name, exc)
        self._spawn(self._restart(room, broadcast), f"restart-{room.name}")

    async def _restart(self, room: Room, broadcast: BroadcastSink) -> None:
        if room._broadcast is not broadcast or room.stopping:
            return  # stopped meanwhile (an end, a lost lease, a shutdown): theirs to finish
        now = time.monotonic()
        delay = 0.0
        if now - room._restarted_at < RESTART_QUIET_SECONDS:  # the last restart failed soon
            delay = min(RESTART_MAX_DELAY, max(1.0, room._restart_delay * 2))
        stopped = room._stopped = asyncio.Event()  # speakers who arrive meanwhile wait
        try:
            room._clock = room._mixer = room._broadcast = None
            self.metrics.rooms_live.dec()
            await self._stop_broadcast(room, broadcast, end=False, failed=True)
            while True:
                if delay:
                    log.warning("room %s: back on air in %g s (its last restart here was "
                                "%.1f s ago)", room.name, delay, now - room._restarted_at)
                    await asyncio.sleep(delay)
                room._restart_delay = delay
                try:
                    async with room._taking:
                        outcome = await self._back_on_air(room)
                except Exception:
                    log.exception("room %s: putting it back on air failed", room.name)
                    outcome = "failed"
                self.metrics.program_restarts.labels(outcome).inc()
                if outcome != "failed":
                    break
                delay = min(RESTART_MAX_DELAY, max(1.0, delay * 2))
            room._restarted_at = time.monotonic()
            if outcome == "on_air":
                for speaker in list(room.speakers.values()):
                    self._remix(room, speaker)
                log.info("room %s: back on air in epoch %d, its speakers kept (%d)",
                         room.name, room.epoch, len(room.speakers))
                return
        finally:
            if room._stopped is stopped:
                room._stopped = None
            stopped.set()
        # Not back here: the speakers reconnect and land where the room is now (another
        # node's lease), or are refused (it ended).
        log.warning("room %s: not back on air here (%s); its speakers are let go", room.name,
                    outcome)
        for speaker in list(room.speakers.values()):
            await self._drop(room, speaker)

    async def _back_on_air(self, room: Room) -> str:
        """Put a live room that is on air nowhere back on air here: "on_air", "elsewhere"
        when another node holds its lease now, "stopped" when it ended or the service began
        to close meanwhile. Raises what the store or the registry raised."""
        if room.state != "live" or self._closing or room.on_air:
            return "on_air" if room.on_air else "stopped"
        if self.node is None:
            await self._resume(room)
            return "on_air"
        lease = await self.node.take(room.name)  # the same node taking it again: a new epoch
        if lease is None or not await self._on_air_leased(room, lease):
            return "elsewhere"
        return "on_air"

    async def close(self, deadline: float = 10.0) -> None:
        """Service shutdown: stop every live room without ending it (the next start of the
        service resumes it), then write what the registry is still owed.

        `deadline` is one budget for the whole hand-over (store, registry, leases), not one
        per step: an orchestrator's stop timeout must cover it, so it cannot add up."""
        self._closing = True
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        def left() -> float:
            return max(0.0, end - loop.time())

        if self.node is not None:
            await self.node.stop()
        # Speakers relayed from here end their relays in order, the owner letting them go at
        # once (left to `leave`'s background close, they were cancelled below before they
        # ran, and each owner kept a silent speaker until this process was gone).
        relays = [speaker.relay for room in self._rooms.values()
                  for speaker in room.relayed.values() if speaker.relay is not None]
        for room in self._rooms.values():
            room.relayed.clear()
        if relays:
            try:
                await asyncio.wait_for(asyncio.gather(*(relay.close() for relay in relays)),
                                       left())
            except TimeoutError:
                log.warning("%d relays to other nodes not ended in time", len(relays))
        stopped = [room for room in self._rooms.values() if room.state == "live" and room.on_air]
        # Rooms stop side by side: each waits for its encoders' last part, and a node with many
        # rooms must not hand them over one after another.
        await asyncio.gather(*(self._stop_room(room, end=False) for room in stopped))
        for _ in stopped:
            self.metrics.rooms_live.dec()
        for task in list(self._ending):
            task.cancel()
        if self.node is not None and stopped:
            # Hand the rooms over: once the store and the registry hold where each stopped,
            # release the leases, and another node adopts them without waiting for expiry.
            await self.packager.flush(left())
            await self.ledger.flush(left())
            node = self.node
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(node.release(room) for room in stopped)), left())
            except TimeoutError:
                log.warning("leases of %d rooms not released in time; they expire on their own",
                            len(stopped))
            else:
                # When the next node may adopt them: the hand-over's length, as seen from here.
                log.info("leases of %d rooms released, %.2f s after the stop began",
                         len(stopped), deadline - left())
        await self.ledger.close(left())

    # --- internals --------------------------------------------------------------------
    def _go_live(self, room: Room, plan: EpochPlan, resumed: bool = False,
                 recorded: bool = False) -> None:
        """Put `room` on air with `plan`; `recorded` when the registry already has the new
        epoch (a lease handed it out)."""
        broadcast = self.packager.start_broadcast(room.name, plan,
                                                  lambda n: self._advanced(room, plan.number, n))
        room._broadcast = broadcast
        room.broadcast_id = plan.broadcast
        room.epoch, room.next_msn = plan.number, plan.first_msn
        room._mixer = Mixer(hold=self.policy.hold)
        # PROGRAM-DATE-TIME counts from when the first sample was captured: the clock
        # anchors the broadcast once, earlier than now by the speakers' jitter buffering.
        room._clock = ProgramClock(
            room._mixer.render, broadcast.feed, on_block=lambda: self._after_block(room),
            anchor=broadcast.anchor, capture_delay=room._mixer.capture_delay,
            wanted=broadcast.samples_wanted,
            on_stopped=lambda exc: self._program_stopped(room, broadcast, exc),
        )
        room._mixer.on_change = room._clock.sync
        broadcast.wanted_changed = room._clock.replan
        room.state = "live"
        if room.started_at is None or not resumed:
            room.started_at = time.time()
        room._last_voice = time.monotonic()
        room._clock.start()
        self.metrics.rooms_live.inc()
        if self.registry is not None and not recorded:
            registry, started = self.registry, room.started_at
            if not resumed:
                self.ledger.append(f"{room.name} live",
                                   lambda: registry.go_live(room.name, plan.broadcast, started))
            self.ledger.append(f"epoch {plan.number} of {room.name}",
                               lambda: self._record_epoch(registry, room.name, plan))
        log.info("room %s is live (broadcast %s, epoch %d from segment %d%s)", room.name,
                 plan.broadcast, plan.number, plan.first_msn, ", resumed" if resumed else "")

    @staticmethod
    async def _record_epoch(registry: Registry, name: str, plan: EpochPlan) -> None:
        rec = await registry.start_epoch(name, plan.broadcast, time.time())
        while rec.epoch < plan.number:  # the store knew of later epochs than the database
            rec = await registry.start_epoch(name, plan.broadcast, time.time())
        if rec.first_msn < plan.first_msn:
            await registry.advance(name, rec.epoch, plan.first_msn)

    def _advanced(self, room: Room, epoch: int, next_msn: int) -> None:
        room.next_msn = max(room.next_msn, next_msn)
        if self.registry is not None:
            registry = self.registry
            self.ledger.append(f"progress of {room.name}",
                               lambda: registry.advance(room.name, epoch, next_msn),
                               progress_of=room.name)

    def _after_block(self, room: Room) -> None:
        self.metrics.program_seconds.inc(0.02)
        clock = room._clock
        assert clock is not None
        if clock.stats.samples % SAMPLE_RATE:
            return  # the rest once a second
        if room._mixer is not None:
            limited = room._mixer.stats.limited_blocks
            self.metrics.limited_blocks.inc(limited)
            room._mixer.stats.limited_blocks = 0
        # Taken from the clock, which knows what it handed out: a count kept on the room
        # outlived its clock, went negative against the next one, and the metric's refusal
        # stopped that program.
        self.metrics.late_blocks.inc(clock.stats.take_late())
        idle = time.monotonic() - room._last_voice
        if not room.speakers and idle >= self.policy.idle_timeout and room.state == "live":
            task = asyncio.get_running_loop().create_task(
                self.end(room, f"idle for {self.policy.idle_timeout:g} s with no speaker")
            )
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)


async def _settled(event: asyncio.Event | None, refusal: str) -> None:
    """Wait for `event` (None: nothing under way) for RESUME_WAIT_SECONDS at most, else raise
    Unavailable(`refusal`). `asyncio.timeout`, not `wait_for`: under Python 3.11 that can drop
    the cancellation of a speaker who hangs up meanwhile (see `ingest.presence`)."""
    if event is None:
        return
    try:
        async with asyncio.timeout(RESUME_WAIT_SECONDS):
            await event.wait()
    except TimeoutError:
        raise Unavailable(refusal) from None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
