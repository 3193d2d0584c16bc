"""Rooms: who may publish (the key), who is speaking, and the broadcast they feed.

A room is created `waiting`. The first speaker to join starts its broadcast and its program
clock (`live`); from then on the program runs on its own timeline whether anyone speaks or
not, so speakers come, go and come back with the same key on one continuous timeline. The
room ends on request or once nobody has spoken for `idle_timeout` (`ended`: ENDLIST, the
recording kept); an ended room's key is dead, and its name may be used again.

Rooms are remembered in `{data_dir}/ingest/rooms.json` (names and key hashes, never keys),
so a restart on the same disk keeps the keys hosts have pasted into OBS. A disk that does not
outlive the process (a Fargate task's) forgets them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from hls.names import check_room
from ingest.errors import BadKey, RoomEnded, RoomExists, RoomFull, RoomNotFound
from ingest.jitter import JitterBuffer
from ingest.metrics import IngestMetrics
from ingest.mixer import Mixer, MixerInput, ProgramClock
from ingest.stream_keys import hash_key, key_matches, new_key
from packager.ladder import SAMPLE_RATE

log = logging.getLogger("townsquare.ingest.rooms")

RoomState = Literal["waiting", "live", "ended"]
SpeakerKind = Literal["rtmp", "whip", "local"]


class BroadcastSink(Protocol):
    def feed(self, pcm: np.ndarray) -> None: ...

    async def close(self) -> None: ...


class BroadcastStarter(Protocol):
    """What rooms need from the packager: `Packager.start_broadcast`."""

    def start_broadcast(self, room: str) -> Any: ...


@dataclass
class Speaker:
    id: str
    kind: SpeakerKind
    remote: str
    connected_at: float
    input: MixerInput
    disconnect: Callable[[], Awaitable[None]] | None = None

    def push(self, pcm: np.ndarray) -> None:
        self.input.buffer.push(pcm)

    def describe(self) -> dict[str, Any]:
        buf = self.input.buffer
        return {
            "id": self.id,
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
    speakers: dict[str, Speaker] = field(default_factory=dict)
    _mixer: Mixer | None = None
    _clock: ProgramClock | None = None
    _broadcast: Any = None
    _seq: int = 0
    _last_voice: float = 0.0  # monotonic time a speaker was last connected
    _late_reported: int = 0  # late program blocks already counted in the metrics

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
            "state": self.state,
            "live": self.state == "live",
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "duration_seconds": duration,
            "program_seconds": program,
            "broadcast_id": self.broadcast_id,
            "speakers": [s.describe() for s in self.speakers.values()],
        }


@dataclass(frozen=True)
class RoomPolicy:
    idle_timeout: float = 600.0
    hold: np.ndarray | None = None  # program audio looped while nobody is connected
    max_speakers: int = 16
    jitter_ms: dict[str, float] = field(
        default_factory=lambda: {"rtmp": 200.0, "whip": 100.0, "local": 100.0}
    )


class Rooms:
    """Every room this service knows, and the single place rooms change state."""

    def __init__(
        self,
        packager: BroadcastStarter,
        state_file: Path | None,
        metrics: IngestMetrics | None = None,
        policy: RoomPolicy | None = None,
    ) -> None:
        self.packager = packager
        self.policy = policy or RoomPolicy()
        self.metrics = metrics or IngestMetrics()
        self._state_file = state_file
        self._rooms: dict[str, Room] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._load()

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
    def create(self, name: str | None = None) -> tuple[Room, str]:
        name = check_room(name) if name is not None else "room-" + secrets.token_hex(4)
        old = self._rooms.get(name)
        if old is not None and old.state != "ended":
            raise RoomExists(f"room {name!r} already exists ({old.state}); end it first")
        key = new_key()
        room = Room(name=name, key_hash=hash_key(key), created_at=time.time())
        self._rooms[name] = room
        self._save()
        self.metrics.rooms_created.inc()
        log.info("room %s created", name)
        return room, key

    def join(
        self,
        room: Room,
        kind: SpeakerKind,
        remote: str,
        disconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> Speaker:
        if room.state == "ended":
            raise RoomEnded(f"room {room.name!r} has ended")
        if len(room.speakers) >= self.policy.max_speakers:
            raise RoomFull(f"room {room.name!r} has {self.policy.max_speakers} speakers already")
        if room.state == "waiting":
            self._go_live(room)
        assert room._mixer is not None
        room._seq += 1
        sid = f"{kind}-{room._seq}"
        buf = JitterBuffer(target_ms=self.policy.jitter_ms.get(kind, 120.0))
        inp = room._mixer.add(sid, buf)
        speaker = Speaker(sid, kind, remote, time.time(), inp, disconnect)
        room.speakers[sid] = speaker
        room._last_voice = time.monotonic()
        self.metrics.speakers.inc()
        log.info("room %s: speaker %s joined from %s", room.name, sid, remote)
        return speaker

    def leave(self, room: Room, speaker: Speaker) -> None:
        if room.speakers.pop(speaker.id, None) is None:
            return
        if room._mixer is not None:
            room._mixer.remove(speaker.id)
        stats = speaker.input.buffer.stats
        self.metrics.jitter_underruns.inc(stats.underruns)
        self.metrics.jitter_dropped.inc(stats.dropped_samples)
        self.metrics.jitter_corrected.inc(stats.corrected_blocks)
        room._last_voice = time.monotonic()
        self.metrics.speakers.dec()
        log.info("room %s: speaker %s left", room.name, speaker.id)

    def mute(self, room: Room, speaker_id: str, muted: bool) -> Speaker:
        speaker = room.speakers.get(speaker_id)
        if speaker is None:
            raise RoomNotFound(f"room {room.name!r} has no speaker {speaker_id!r}")
        speaker.input.muted = muted
        return speaker

    async def remove(self, room: Room, speaker_id: str) -> None:
        speaker = room.speakers.get(speaker_id)
        if speaker is None:
            raise RoomNotFound(f"room {room.name!r} has no speaker {speaker_id!r}")
        self.leave(room, speaker)
        if speaker.disconnect is not None:
            await speaker.disconnect()

    async def end(self, room: Room, reason: str = "ended by request") -> None:
        if room.state == "ended":
            return
        was_live = room.state == "live"
        room.state = "ended"
        room.ended_at = time.time()
        room.end_reason = reason
        self._save()
        for speaker in list(room.speakers.values()):
            self.leave(room, speaker)
            if speaker.disconnect is not None:
                try:
                    await speaker.disconnect()
                except Exception:
                    log.exception("room %s: disconnecting %s failed", room.name, speaker.id)
        if room._clock is not None:
            await room._clock.stop()
        if was_live:
            self.metrics.rooms_live.dec()
        if room._broadcast is not None:
            try:
                await room._broadcast.close()
            except Exception:
                log.exception("room %s: closing the broadcast failed", room.name)
        self.metrics.rooms_ended.labels(reason="idle" if "idle" in reason else "request").inc()
        log.info("room %s ended: %s", room.name, reason)

    async def close(self) -> None:
        """Service shutdown: end every live room so each recording is complete."""
        for room in list(self._rooms.values()):
            if room.state == "live":
                await self.end(room, "service stopped")
        for task in list(self._ending):
            await task

    # --- internals --------------------------------------------------------------------
    def _go_live(self, room: Room) -> None:
        broadcast = self.packager.start_broadcast(room.name)
        room._broadcast = broadcast
        room.broadcast_id = getattr(broadcast, "broadcast_id", None)
        room._mixer = Mixer(hold=self.policy.hold)
        room._clock = ProgramClock(
            room._mixer.render, broadcast.feed, on_block=lambda: self._after_block(room)
        )
        room.state = "live"
        room.started_at = time.time()
        room._last_voice = time.monotonic()
        room._clock.start()
        self.metrics.rooms_live.inc()
        self._save()
        log.info("room %s is live (broadcast %s)", room.name, room.broadcast_id)

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
        self.metrics.late_blocks.inc(clock.stats.late_blocks - room._late_reported)
        room._late_reported = clock.stats.late_blocks
        idle = time.monotonic() - room._last_voice
        if not room.speakers and idle >= self.policy.idle_timeout and room.state == "live":
            task = asyncio.get_running_loop().create_task(
                self.end(room, f"idle for {self.policy.idle_timeout:g} s with no speaker")
            )
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            data = json.loads(self._state_file.read_text())
            for item in data.get("rooms", []):
                room = Room(item["name"], item["key_hash"], float(item["created_at"]))
                if item.get("state") == "ended":
                    room.state = "ended"
                    room.ended_at = item.get("ended_at")
                    room.started_at = item.get("started_at")
                    room.end_reason = item.get("end_reason")
                    room.broadcast_id = item.get("broadcast_id")
                self._rooms[room.name] = room
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable room state %s: %s", self._state_file, exc)

    def _save(self) -> None:
        if self._state_file is None:
            return
        rooms = [
            {
                "name": r.name, "key_hash": r.key_hash, "created_at": r.created_at,
                "state": "ended" if r.state == "ended" else "waiting",
                "started_at": r.started_at, "ended_at": r.ended_at,
                "end_reason": r.end_reason, "broadcast_id": r.broadcast_id,
            }
            for r in self._rooms.values()
        ]
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rooms": rooms}, indent=1))
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.error("cannot save room state to %s: %s", self._state_file, exc)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
