"""What the registry hands out: immutable snapshots of room, epoch and node rows, and leases.

They are plain values so callers can keep, compare and log them without holding a session;
every change goes back through `Registry` and returns a fresh record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RoomState = Literal["waiting", "live", "ended"]
ROOM_STATES: tuple[RoomState, ...] = ("waiting", "live", "ended")
# The key hash of a room whose key was revoked: no key hashes to the empty string.
REVOKED_KEY_HASH = ""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """One room as stored. Times are float seconds since the Unix epoch."""

    name: str
    key_hash: str
    state: RoomState
    created_at: float
    started_at: float | None
    ended_at: float | None
    end_reason: str | None
    broadcast_id: str | None  # the current (or last) broadcast of the room; spans epochs
    epoch: int  # last epoch number handed out for this room (0 = none yet)
    next_msn: int  # media sequence number the room's next segment gets (starts at 1)
    owner: str | None = None  # node holding the room's lease (it may have expired)
    lease_expires: float | None = None
    private: bool = False  # listeners need a signed token; served only under /private/
    key_generation: int = 1  # grows by one at every rotation or revocation of the key
    title: str = ""
    description: str = ""
    # What the node publishing the room last wrote (every few seconds, when they changed).
    audience: int = 0
    speaker_names: tuple[str, ...] = ()

    @property
    def key_revoked(self) -> bool:
        return self.key_hash == REVOKED_KEY_HASH


@dataclass(frozen=True, slots=True)
class Presence:
    """What the node publishing a room sees of it: listeners across every edge, and who speaks."""

    audience: int
    speakers: tuple[str, ...]  # display names, in the order they joined


@dataclass(frozen=True, slots=True)
class RoomListing:
    """The public rooms a directory lists: live ones, and ended ones with a recording."""

    live: tuple[RoomRecord, ...]  # longest on air first
    replays: tuple[RoomRecord, ...]  # newest end first


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One epoch: a stretch of a broadcast produced by one owner, fenced by its number."""

    room: str
    epoch: int
    broadcast_id: str
    started_at: float
    ended_at: float | None
    first_msn: int
    last_msn: int | None  # last complete segment written in this epoch


@dataclass(frozen=True, slots=True)
class Lease:
    """A room held by `node` until `expires`, publishing as `epoch` from segment `next_msn`.

    The owner must stop publishing before `expires` unless a renewal succeeded first; after
    that another node may take the room with a higher epoch.
    """

    room: str
    node: str
    epoch: int  # the fencing number handed out with this lease
    expires: float
    next_msn: int
    broadcast_id: str | None


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a room's live lease, and where other nodes reach it."""

    node: str
    epoch: int
    expires: float
    internal_url: str | None  # None when the owner is not (or no longer) in the node directory


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One ingest node in the directory, as it last reported itself."""

    id: str
    internal_url: str  # its internal HTTP API, for other nodes and the origin tier
    control_url: str
    rtmp_port: int
    rooms: int  # rooms it owns
    cpu: float  # load, 0..1
    capacity: int  # most rooms it accepts
    heartbeat_at: float
    draining: bool = False  # handing its rooms over; takes no new ones

    @property
    def load(self) -> float:
        """Share of its capacity in use; a node without capacity counts as full."""
        return self.rooms / self.capacity if self.capacity > 0 else float("inf")
