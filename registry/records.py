"""What the registry hands out: immutable snapshots of a room row and an epoch row.

They are plain values so callers can keep, compare and log them without holding a session;
every change goes back through `Registry` and returns a fresh record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RoomState = Literal["waiting", "live", "ended"]
ROOM_STATES: tuple[RoomState, ...] = ("waiting", "live", "ended")


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
