"""Live broadcasts: program PCM in, CMAF parts, LL-HLS playlists and a recording out.

`Packager` owns the store writer, the encoder threads and the in-process `Hub` the origin
reads. Each `Broadcast` is one epoch of a room: it encodes every rendition of the ladder on
the encoder pool (never behind storage I/O), publishes each part to the hub the moment it is
cut, and queues every object for the store.

A broadcast hands its blocks to the pool through `EncoderLane`, written here rather than
a `run_in_executor` per block: that cost the event loop a future, a wake-up and a task
switch per block and rendition (150 a second a room, more than the rest of publishing);
the lane costs a list append per block, and the loop hears back only when something is cut.
The lane also holds blocks back until they complete a part in some rendition, and hands them
over together: an encoder woken for every 20 ms block cost 4.4–5.0 CPU s per broadcast-minute
against 3.1–3.3 when woken every 100 ms (the codecs' caches and the thread's wake-up), and
a part held so is cut at the very block it was cut at before, since nothing can be cut
between two part boundaries anyway.

A room's URLs outlive its epochs. `resume_point` reads what the store says about a room (its
last live window, epoch and broadcast), and `start_broadcast` continues from it: media
sequence numbers go on, the old window stays in the playlist followed by a discontinuity,
and the new epoch's objects live under their own epoch folder. Objects are named by
`hls.names`, whose docstring draws the layout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from hls.http import IMMUTABLE, SHORT
from hls.names import (
    INIT,
    LIVE_PLAYLIST,
    MASTER,
    ROOM_INFO,
    STATE,
    check_room,
    epoch_id,
    epoch_number,
    new_broadcast_id,
    part_name,
    room_key,
    segment_name,
)
from packager.boxes import read_fragment
from packager.cmaf import LadderEncoder, LadderEvent, PartReady, silent_segment
from packager.errors import BroadcastClosed, StoreError, StoreUnavailable
from packager.ladder import GRID_SAMPLES, PART_TARGET_SECONDS, SAMPLE_RATE, Rendition
from packager.live import Hub, LiveRoom, dumps_state
from packager.playlist import (
    MediaPlaylist,
    Part,
    PlaylistBuilder,
    PlaylistParseError,
    Segment,
    Variant,
    parse_media,
    render_media,
    render_multivariant,
    resume_window,
    target_duration_for,
)
from packager.recording import (
    BroadcastInfo,
    EpochInfo,
    RecordingIndex,
    epochs_key,
    finish_cut_segment,
    read_chunks,
    recording_key,
    render_recording,
    repair_epoch,
    segment_timing,
)
from packager.recording import Entry as RecordingEntry
from packager.settings import PackagerSettings
from packager.store import Store, open_store
from packager.writer import StoreWriter, WriterLimits
from serving.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PARTS_CUT = Counter("townsquare_packager_parts_total", "Parts cut", ["rendition"])
SEGMENTS_CUT = Counter("townsquare_packager_segments_total", "Segments cut", ["rendition"])
BROADCASTS_LIVE = Gauge("townsquare_packager_broadcasts_live", "Broadcasts on air")
PCM_QUEUED = Gauge("townsquare_packager_pcm_queued_seconds",
                   "Program audio waiting for the encoder, all rooms")
PCM_HELD = Gauge("townsquare_packager_pcm_held_seconds",
                 "Program audio held until it completes a part, all rooms (at most one part "
                 "and the codec's look-ahead a room)")
# Program audio a broadcast holds before it refuses more: the encoder is ~50× real time, so
# this is only reached when the encoder pool is starved; refusing keeps memory bounded.
MAX_QUEUED_SECONDS = 30.0
# An epoch that has stopped is dropped from memory this long after (its objects are stored).
RELEASE_AFTER_SECONDS = 5.0
# A resume first waits this long for what an earlier run left on disk to be stored (the
# parts a crash caught on their way to the store): a store that has not taken them by then is
# down, and the resume goes on with what the store holds.
RECOVERED_WAIT_SECONDS = 5.0
# A resume's read that the store failed is tried again after this long, then twice as long
# each time up to a second, within the same wait.
RESUME_RETRY_SECONDS = 0.1
# Whole segments every rendition holds before the room's master playlist appears. Players
# that ignore parts cannot start on less than one; GStreamer's hlsdemux2 (1.22) that starts
# on a playlist of one whole segment never plays: its first reload finds no segment it can
# match with the playlist before (it compares all but the first) and it stays stuck at the
# start. With two it plays (three joins in three at each count, `test_classic_players`).
ANNOUNCE_SEGMENTS = 2
# Segments a broadcast remembers per rendition whose parts wait for the segment to be
# stored before they expire (`Broadcast._expire_parts`); beyond that (the store far behind)
# the oldest parts are left where they are, counted.
MAX_EXPIRING_SEGMENTS = 4096
AWAITING_EXPIRY = Gauge("townsquare_packager_segments_awaiting_part_expiry",
                       "Segments (one per rendition) whose parts wait to leave the live window "
                       "and for the segment to be stored, all rooms")
PARTS_EXPIRED = Counter("townsquare_packager_parts_expired_total",
                        "Parts removed from the store once their segment left the live window "
                        "(a folder store; S3's lifecycle rule removes them there)", ["outcome"])


class EncoderLane:
    """One broadcast's encoding, in order, on a shared pool: blocks put on the event loop
    are encoded by one pool thread at a time (the lane holds at most one job in the pool
    while it has work), and what they cut is handed back to the loop with
    `call_soon_threadsafe`, in the order it was cut.

    Blocks that cannot complete a part are held on the loop's side until one can: after each
    encode the encoder says how many more samples its next part needs (`due`), and the pool
    is only woken once that many have been put. `finish()` queues the end: the encoder is
    flushed after every block put before it and `on_finished` gets the last events. An
    error stops the lane: `on_error` gets it, once, and later blocks are dropped."""

    def __init__(self, encoder: LadderEncoder, pool: Executor, loop: asyncio.AbstractEventLoop,
                 on_events: Callable[[list[LadderEvent]], None],
                 on_finished: Callable[[list[LadderEvent]], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self._encoder = encoder
        self._pool = pool
        self._loop = loop
        self._on_events, self._on_finished, self._on_error = on_events, on_finished, on_error
        self._lock = threading.Lock()
        self._blocks: list[np.ndarray | None] = []  # None: finish here
        self._busy = False  # a job of this lane is in the pool
        self._failed = False
        self.queued = 0  # samples handed over and not yet taken by the encoder thread
        self._held: list[np.ndarray] = []  # blocks that complete no part yet (loop side)
        self.held = 0  # samples in `_held`
        self.put_samples = 0  # samples put, held ones included
        self._pushed = 0  # samples the encoder has been fed (encoder thread)
        self.due = 0  # `put_samples` at which the encoder's next part is complete: 0 until known

    def put(self, pcm: np.ndarray) -> None:
        n = pcm.shape[1]
        self.put_samples += n
        if self.put_samples < self.due:
            self._held.append(pcm)
            self.held += n
            PCM_HELD.inc(n / SAMPLE_RATE)
            return
        self._hand_over([pcm])

    def finish(self) -> None:
        self._hand_over([None])

    def discard_held(self) -> None:
        """Forget the blocks held back (an epoch that failed encodes nothing more)."""
        self._take_held()

    def _take_held(self) -> list[np.ndarray]:
        held, self._held = self._held, []
        PCM_HELD.dec(self.held / SAMPLE_RATE)
        self.held = 0
        return held

    def _hand_over(self, blocks: list[np.ndarray | None]) -> None:
        if self._held:
            blocks = [*self._take_held(), *blocks]
        samples = sum(b.shape[1] for b in blocks if b is not None)
        PCM_QUEUED.inc(samples / SAMPLE_RATE)
        with self._lock:
            self._blocks.extend(blocks)
            self.queued += samples
            if self._busy:
                return
            self._busy = True
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                blocks, self._blocks = self._blocks, []
                queued, self.queued = self.queued, 0
                if not blocks:
                    self._busy = False
                    return
            PCM_QUEUED.dec(queued / SAMPLE_RATE)
            if self._failed:
                continue
            try:
                self._encode(blocks)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which ends the epoch
                self._failed = True
                self._loop.call_soon_threadsafe(self._on_error, exc)

    def _encode(self, blocks: list[np.ndarray | None]) -> None:
        pcm: list[np.ndarray] = []  # blocks since the last call, encoded as one
        for block in blocks:
            if block is not None:
                pcm.append(block)
                continue
            self._push(pcm)
            pcm = []
            self._loop.call_soon_threadsafe(self._on_finished, self._encoder.finish())
        self._push(pcm)

    def _push(self, pcm: list[np.ndarray]) -> None:
        if not pcm:
            return
        block = pcm[0] if len(pcm) == 1 else np.concatenate(pcm, axis=1)
        events = self._encoder.push(block)
        self._pushed += block.shape[1]
        # An int written here and read on the loop: at worst the loop reads the last one,
        # which is earlier, and wakes the pool once more than it needed to.
        self.due = self._pushed + self._encoder.samples_to_cut()
        if events:
            self._loop.call_soon_threadsafe(self._on_events, events)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a room's timeline stands, as the store tells it."""

    next_msn: int = 1
    epoch_number: int = 0  # the newest epoch the store has seen for the room (0: none)
    broadcast: str | None = None  # the broadcast still open (not ended), if any
    windows: dict[str, MediaPlaylist] = field(default_factory=dict)  # its live windows
    epochs: tuple[EpochInfo, ...] = ()  # the open broadcast's epochs so far


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """What a new epoch continues from: decided by the caller (from the registry and the
    store's resume point) before `start_broadcast`."""

    broadcast: str
    number: int  # the fencing number: strictly greater than any earlier epoch of the room
    first_msn: int
    prior: tuple[EpochInfo, ...] = ()  # earlier epochs of the same broadcast
    windows: dict[str, MediaPlaylist] = field(default_factory=dict)


def plan_epoch(point: ResumePoint, broadcast: str | None = None, number: int | None = None,
               first_msn: int | None = None,
               prior: tuple[EpochInfo, ...] | None = None) -> EpochPlan:
    """The next epoch after `point`, with the registry's numbers where it has them (both only
    ever grow: the larger wins). Without `broadcast`, the open one is continued, else a new
    one begins; a new broadcast carries no window and no earlier epochs."""
    bid = broadcast or point.broadcast or new_broadcast_id(time.time())
    continuing = bid == point.broadcast
    return EpochPlan(
        broadcast=bid,
        number=max(number or 0, point.epoch_number + 1),
        first_msn=max(first_msn or 1, point.next_msn),
        prior=(prior if prior else point.epochs) if continuing or prior else (),
        windows=point.windows if continuing else {},
    )


class Broadcast:
    """One epoch of one room's broadcast.

    `feed()` takes program audio: float32 numpy array shaped (2, n), planar stereo at
    48 kHz, values in [-1, 1]. It never blocks on encoding or storage. The caller owns the
    program clock (it paces feeding at real time); the broadcast counts samples from the
    moment its first sample was captured: `started_at`, unless the caller `anchor()`s it.
    `close()` ends the broadcast: ENDLIST on the live playlists and a complete recording.
    `suspend()` stops this epoch without ending the broadcast (a restart resumes it).
    """

    def __init__(self, packager: Packager, room: str, plan: EpochPlan,
                 on_segment: Callable[[int], None] | None = None):
        s = packager.settings
        self.packager = packager
        self.room = room
        self.broadcast_id = plan.broadcast
        self.renditions: list[Rendition] = s.renditions()
        self.started_at = time.time()
        self.epoch = EpochInfo(epoch_id(plan.number, plan.broadcast), self.started_at, plan.first_msn)
        self.info = BroadcastInfo(room, plan.broadcast, [r.name for r in self.renditions],
                                  target_duration_for(s.segment_units * GRID_SAMPLES / SAMPLE_RATE),
                                  [*plan.prior, self.epoch])
        self.samples_fed = 0
        self._on_segment = on_segment
        # Told when `samples_wanted()` has changed (a part was cut): the program clock.
        self.wanted_changed: Callable[[], None] | None = None
        td = self.info.target_duration
        start_tds = s.live_start_target_durations
        start_offset = -start_tds * td if start_tds else None
        self._encoder: LadderEncoder | None = LadderEncoder(self.renditions, s.segment_units,
                                                            plan.first_msn)
        self._builders: dict[str, PlaylistBuilder] = {}
        for r in self.renditions:
            base = MediaPlaylist(td, PART_TARGET_SECONDS, self._uri(INIT),
                                 preload_hint=self._uri(part_name(plan.first_msn, 0)),
                                 start_offset=start_offset)
            start = resume_window(plan.windows.get(r.name), plan.first_msn, self._uri(INIT), base)
            self._builders[r.name] = PlaylistBuilder(start, s.live_window_segments)
        self._index = {r.name: RecordingIndex(room, r.name, self.epoch) for r in self.renditions}
        master = render_multivariant([Variant(r, f"{r.name}/{LIVE_PLAYLIST}")
                                      for r in self.renditions]).encode()
        self.live = LiveRoom(room, self.epoch.id, self.renditions,
                             {n: b.playlist for n, b in self._builders.items()}, master,
                             local=True)
        self.writer = packager.writer
        self._lane: EncoderLane | None = None  # made by `_start`, on the running loop
        self._done: asyncio.Future[list[LadderEvent]] | None = None  # the encoder's last events
        self._closing = False
        self._ending = False
        self._failure: BaseException | None = None  # what ended the epoch, when it failed
        self._announced = False
        self._cut_any = False  # a part is out: the timeline's origin is fixed
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        # Each stored-to-be segment's key and its parts' keys, oldest first, per rendition.
        # No playlist lists a part once its segment has left the live window: the store may
        # then drop the part, once the segment (the same audio) is stored.
        # Counted per rendition: each rendition cuts its segments when its own frames end
        # them, not all in the same step, and one count over all of them let a rendition
        # behind the others lose parts its window still held.
        self._expiring: dict[str, deque[tuple[str, list[str]]]] = {
            r.name: deque() for r in self.renditions}
        self._window = s.live_window_segments

    @property
    def base(self) -> str:
        """Where the recording of this broadcast lives (its multivariant playlist's folder)."""
        return room_key(self.room, self.broadcast_id)

    def _uri(self, name: str) -> str:
        return f"{self.epoch.id}/{name}"

    def _key(self, rendition: str, name: str) -> str:
        return room_key(self.room, rendition, self.epoch.id, name)

    # --- public ------------------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> None:
        if self._closing:
            if self._failure is not None:
                raise BroadcastClosed(f"epoch {self.epoch.id} of {self.room} failed: "
                                      f"{self._failure}")
            raise BroadcastClosed(f"broadcast {self.broadcast_id} of {self.room} has ended")
        if pcm.ndim != 2 or pcm.shape[0] != 2:
            raise ValueError(f"expected planar stereo (2, n), got shape {pcm.shape}")
        lane = self._lane
        assert lane is not None
        if lane.queued + lane.held + pcm.shape[1] > MAX_QUEUED_SECONDS * SAMPLE_RATE:
            raise BroadcastClosed(f"{self.room}: the encoder is {MAX_QUEUED_SECONDS:g} s behind")
        lane.put(pcm)
        self.samples_fed += pcm.shape[1]

    def samples_wanted(self) -> int:
        """How many more samples complete the next part (0 when not known yet): until then
        the encoder only holds what it is fed."""
        lane = self._lane
        return max(0, lane.due - lane.put_samples) if lane is not None else 0

    @property
    def _queued(self) -> int:
        """Samples handed to the encoder and not yet taken (held ones wait for more audio)."""
        return self._lane.queued if self._lane is not None else 0

    def anchor(self, captured_at: float) -> bool:
        """Set the wall-clock time at which the first sample fed was captured: every
        PROGRAM-DATE-TIME is counted from it (a mixer that delays its speakers by a jitter
        buffer knows how much earlier than it was fed the audio was heard). Only before the
        first part is cut, so the timeline never jumps; returns whether it was taken."""
        if self._cut_any:
            log.warning("room %s: timeline anchor ignored, parts are already out", self.room)
            return False
        self.started_at = captured_at
        self.epoch = replace(self.epoch, started_at=captured_at)
        self.info.epochs[-1] = self.epoch
        for index in self._index.values():
            index.epoch = self.epoch
        if self._task is not None:  # started: epochs.json was written with the old origin
            self.writer.put(epochs_key(self.room, self.broadcast_id), self.info.dumps(), SHORT)
        return True

    async def close(self) -> None:
        """End the broadcast: ENDLIST, the whole recording, and everything stored."""
        await self._stop(end=True)

    async def suspend(self) -> None:
        """Stop this epoch without ending the broadcast: what was cut is stored, the
        playlists stay open, and the next start of the room carries on from here."""
        await self._stop(end=False)

    async def _stop(self, end: bool) -> None:
        if not self._closing:
            self._closing = True
            self._ending = end
            if self._lane is not None:
                self._lane.finish()
        if self._task:
            await asyncio.shield(self._task)

    # --- internals ---------------------------------------------------------------------
    def _start(self) -> None:
        assert self._encoder is not None
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._lane = EncoderLane(self._encoder, self.packager.encoder_pool, loop,
                                 self._on_events, self._on_finished, self._on_error)
        for r in self.renditions:
            enc = self._encoder.encoders[r.name]
            self.live.renditions[r.name].init = enc.init
            self.writer.put(self._key(r.name, INIT), enc.init, IMMUTABLE, live=True,
                            durable=True)
        self._write_room_info()
        self.writer.put(epochs_key(self.room, self.broadcast_id), self.info.dumps(), SHORT)
        BROADCASTS_LIVE.inc()
        self._task = loop.create_task(self._run(), name=f"broadcast-{self.room}")

    def _write_room_info(self, ended: bool = False) -> None:
        info = {"broadcast": self.broadcast_id, "epoch": self.epoch.id,
                "started_at": self.started_at, "ended": ended}
        self.writer.put(room_key(self.room, ROOM_INFO), json.dumps(info).encode(), "no-cache",
                        live=True)

    def _write_masters(self) -> None:
        rec = render_multivariant([Variant(r, f"{r.name}/recording.m3u8")
                                   for r in self.renditions]).encode()
        self.writer.put(recording_key(self.room, self.broadcast_id), rec, SHORT)
        self.writer.put(room_key(self.room, MASTER), self.live.master, SHORT, live=True)

    async def _run(self) -> None:
        assert self._done is not None
        try:
            self._publish(await self._done)  # the lane has encoded everything, then flushed
            if self._ending:
                self._end()
                # The final recording is read back from the store: let the index land first
                # (within the drain deadline; the origin composes it anyway).
                if await self.writer.drain(self.packager.settings.store_drain_seconds):
                    await self._write_final_recording()
            else:
                self._suspend()  # Packager.close drains once for every room
        except Exception:
            log.exception("broadcast %s/%s failed", self.room, self.epoch.id)
            raise
        finally:
            if self._lane is not None:
                self._lane.discard_held()  # only an epoch that failed still holds any
            self._encoder = self._lane = None  # the codecs' memory goes with them
            # The window's last segments keep their parts (the next epoch's window starts
            # with them): a few hundred files an epoch at most.
            AWAITING_EXPIRY.dec(sum(map(len, self._expiring.values())))
            for waiting in self._expiring.values():
                waiting.clear()
            self.closed = True
            BROADCASTS_LIVE.dec()
            self.packager.stopped(self)

    # The lane's callbacks, on the event loop.
    def _on_events(self, events: list[LadderEvent]) -> None:
        if self._done is None or self._done.done():
            return  # failed already: nothing more is published
        try:
            self._publish(events)
        except Exception as exc:  # noqa: BLE001 - ends the epoch through `_run`
            self._on_error(exc)
            return
        if self.wanted_changed is not None:
            self.wanted_changed()

    def _on_finished(self, events: list[LadderEvent]) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(events)

    def _on_error(self, exc: BaseException) -> None:
        """Encoding or publishing failed: the epoch ends (`_run` logs it), and refuses audio."""
        self._closing = True
        self._failure = self._failure or exc
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _publish(self, events: list[LadderEvent]) -> None:
        if not events:
            return
        self._cut_any = True
        first = self.renditions[0].name
        for name, ev in events:
            b = self._builders[name]
            lr = self.live.renditions[name]
            if isinstance(ev, PartReady):
                uri = part_name(ev.msn, ev.index)
                nxt = part_name(ev.msn + 1, 0) if ev.last_in_segment else part_name(ev.msn, ev.index + 1)
                pl = b.add_part(Part(ev.samples / SAMPLE_RATE, self._uri(uri)),
                                self.started_at + ev.start_sample / SAMPLE_RATE, self._uri(nxt))
                lr.remember(uri, ev.data)
                # Listed for listeners in this same step: on disk before that, so that a
                # crash cannot lose what they were told of.
                self.writer.put(self._key(name, uri), ev.data, IMMUTABLE, live=True,
                                durable=True)
                PARTS_CUT.labels(name).inc()
            else:
                uri = segment_name(ev.msn)
                pl = b.close_segment(self._uri(uri), b.playlist.preload_hint)
                lr.remember(uri, ev.data)
                self.writer.put(self._key(name, uri), ev.data, IMMUTABLE)
                entry = RecordingEntry(ev.msn, ev.samples / SAMPLE_RATE,
                                       self.started_at + ev.start_sample / SAMPLE_RATE)
                key, chunk = self._index[name].add(entry)
                self.writer.put(key, chunk, SHORT)
                parts = range(len(pl.segments[-1].parts))
                self._expiring[name].append(
                    (self._key(name, uri), [self._key(name, part_name(ev.msn, i)) for i in parts]))
                AWAITING_EXPIRY.inc()
                # A plain live playlist for anyone serving the bucket directly, and the
                # window a restart of the room carries on from.
                self.writer.put(room_key(self.room, name, LIVE_PLAYLIST),
                                render_media(pl).encode(), SHORT, live=True)
                SEGMENTS_CUT.labels(name).inc()
                if name == first and self._on_segment is not None:
                    self._on_segment(ev.msn + 1)
            lr.playlist = pl
        self.live.touch({name for name, _ in events})
        if not self._announced and all(len(b.playlist.segments) >= ANNOUNCE_SEGMENTS
                                       for b in self._builders.values()):
            # The room's entry point appears once every rendition has whole segments enough
            # for players that ignore parts (ANNOUNCE_SEGMENTS).
            self._announced = self.live.announced = True
            self._write_masters()
        self._put_state()
        self._expire_parts()

    def _expire_parts(self) -> None:
        """Hand the store the parts of segments that have left the live window, once the
        segment and its parts are stored (a part dropped while its own write waits would
        only come back)."""
        ready: list[str] = []
        for waiting in self._expiring.values():
            while len(waiting) > self._window:
                segment, parts = waiting[0]
                if not (self.writer.stored(segment) and all(map(self.writer.stored, parts))):
                    break
                waiting.popleft()
                AWAITING_EXPIRY.dec()
                ready.extend(parts)
            while len(waiting) > MAX_EXPIRING_SEGMENTS:
                PARTS_EXPIRED.labels("left").inc(len(waiting.popleft()[1]))
                AWAITING_EXPIRY.dec()
        if ready:
            self.packager.expire(ready)

    def _put_state(self) -> None:
        if self.packager.settings.writes_state:
            self.writer.put(room_key(self.room, STATE), dumps_state(self.live), "no-cache",
                            live=True)

    def _suspend(self) -> None:
        if not self._announced:
            self._announced = True
            self._write_masters()
        self._put_state()
        log.info("room %s: epoch %s suspended (the room resumes on the next start)",
                 self.room, self.epoch.id)

    def _end(self) -> None:
        if not self._announced:
            self._announced = True
            self._write_masters()
        for name, b in self._builders.items():
            pl = b.end()
            self.live.renditions[name].playlist = pl
            self.writer.put(room_key(self.room, name, LIVE_PLAYLIST), render_media(pl).encode(),
                            SHORT, live=True)
        self.info.ended = True
        self.writer.put(epochs_key(self.room, self.broadcast_id), self.info.dumps(), SHORT)
        self._write_room_info(ended=True)
        self.live.touch()
        self._put_state()

    async def _write_final_recording(self) -> None:
        """The whole recording, once, for readers of the bucket that do not compose it."""
        store = self.packager.store
        for name in self.info.renditions:
            try:
                chunks = [(e, await read_chunks(store, self.room, name, e)) for e in self.info.epochs]
            except StoreError as exc:
                log.warning("room %s: final recording not written (%s); the origin composes it",
                            self.room, exc)
                return
            text = render_recording(self.info, name, chunks).encode()
            self.writer.put(recording_key(self.room, self.broadcast_id, name), text, SHORT)


class Packager:
    """Starts broadcasts and holds what the origin needs to serve them live."""

    def __init__(self, settings: PackagerSettings, store: Store | None = None,
                 hub: Hub | None = None):
        settings.renditions()  # fail early on a bad ladder
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.hub = hub if hub is not None else Hub()
        self.writer = StoreWriter(self.store, WriterLimits.from_settings(settings))
        self.encoder_pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                               thread_name_prefix="encode")
        self.broadcasts: dict[str, Broadcast] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> str | None:
        """Check the store and start writing (objects an earlier run spilled go first).
        Returns the store's problem in words when it cannot take writes now: rooms go on
        air anyway, from memory, and what they write waits on disk for the store."""
        problem = None
        try:
            await self.store.check()
        except StoreError as exc:
            problem = str(exc)
            log.error("store %s cannot take writes now: %s. Rooms go on air from memory; "
                      "their objects wait (spilled to disk past %d MiB) until it can.",
                      self.store.describe(), exc, self.settings.store_memory_bytes >> 20)
        if not self._started:
            self._started = True
            self.writer.start()
        return problem

    @property
    def segment_samples(self) -> int:
        return self.settings.segment_units * GRID_SAMPLES

    def expire(self, keys: list[str]) -> None:
        """Have the store drop live-only objects nobody will ask for again (in the
        background; a failure is logged, the objects stay)."""
        self._spawn(self._expire(keys), "expire-parts")

    async def _expire(self, keys: list[str]) -> None:
        try:
            removed = await self.store.expire(keys)
        except StoreError as exc:
            log.warning("%d expired parts not removed: %s", len(keys), exc)
            PARTS_EXPIRED.labels("failed").inc(len(keys))
            return
        PARTS_EXPIRED.labels("removed").inc(removed)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume_point(self, room: str, wait: float = RECOVERED_WAIT_SECONDS) -> ResumePoint:
        """What the store says about `room`: where its timeline stands and, when its last
        broadcast is still open (a crash or a restart), the window and epochs to carry on.
        Within `wait` seconds: what the last run left on disk is first given that long to
        reach the store, and a read the store fails meanwhile (a connection reset, a 503) is
        tried again. A store still failing then, or holding what cannot be read, gives a new
        timeline (logged): the room goes on air, without its window."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        if not await self.writer.recovered(wait):
            log.warning("room %s: resumed before the store took what the last run left on "
                        "disk (%s); its last parts may be missing", room,
                        self.writer.limits.spill_dir)
        delay = RESUME_RETRY_SECONDS
        while True:
            try:
                return await self._read_resume_point(room)
            except StoreUnavailable as exc:
                if loop.time() + delay >= deadline:
                    log.warning("room %s: cannot read where its timeline stands (%s); "
                                "starting a new one", room, exc)
                    return ResumePoint()
                log.info("room %s: reading where its timeline stands failed (%s); again in "
                         "%.1f s", room, exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
            except (StoreError, ValueError, KeyError, TypeError) as exc:
                log.warning("room %s: cannot read where its timeline stands (%s); "
                            "starting a new one", room, exc)
                return ResumePoint()

    async def _read_resume_point(self, room: str) -> ResumePoint:
        """`resume_point`'s reading of the store, once; raises what the store raises."""
        store = self.store
        raw = await store.get(room_key(room, ROOM_INFO))
        if raw is None:
            return ResumePoint()
        info = json.loads(raw)
        number = epoch_number(str(info["epoch"]))
        bid = None if info.get("ended") else str(info["broadcast"])
        # Each read at once: a room's failover waits on them (`_complete_windows` too).
        names = [r.name for r in self.settings.renditions()]
        reads = [store.get(room_key(room, name, LIVE_PLAYLIST)) for name in names]
        if bid is not None:
            reads.append(store.get(epochs_key(room, bid)))
        got = await asyncio.gather(*reads)
        texts, epochs_raw = got[:len(names)], got[len(names):]
        windows: dict[str, MediaPlaylist] = {}
        next_msn = 1
        for name, text in zip(names, texts, strict=True):
            if text is None:
                continue
            try:
                pl = parse_media(text.decode())
            except PlaylistParseError as exc:
                log.warning("room %s: stored %s playlist unreadable: %s", room, name, exc)
                continue
            next_msn = max(next_msn, pl.next_msn)
            if not pl.ended:
                windows[name] = pl
        if bid is None:
            return ResumePoint(next_msn, number)
        epochs = tuple(BroadcastInfo.loads(epochs_raw[0]).epochs) if epochs_raw[0] else ()
        last = next((e for e in epochs if e.id == info["epoch"]), None)
        if last is not None and windows:
            next_msn = await self._complete_windows(room, last, windows, next_msn)
        return ResumePoint(next_msn, number, bid, windows, epochs)

    async def _complete_windows(self, room: str, epoch: EpochInfo,
                                windows: dict[str, MediaPlaylist], next_msn: int) -> int:
        """Bring every rendition's stored window up to what the store holds of the epoch a
        stop or a crash ended, segment by segment: each one stored whole, or else made whole
        from its stored parts (the segment the crash cut short, or one whose upload had not
        landed). A rendition left short of the others is made as long with silence. Returns
        the next media sequence number; the windows are completed in place. The renditions
        are read at the same time, and what a segment needs in as few rounds as its reads
        allow: a failover waits for each round trip to the store (16 reads one after another
        took 0.9 s on a loaded moto; the crash `tests/packager/test_resume.py -k at_once`
        leaves took 56 rounds, and takes 10)."""
        time_base = (epoch.first_msn - 1) * self.segment_samples
        folder = f"{epoch.id}/"

        def extended(pl: MediaPlaylist, msn: int, data: bytes,
                     parts: tuple[Part, ...] = ()) -> MediaPlaylist:
            tfdt, samples = segment_timing(data)
            seg = Segment(msn, samples / SAMPLE_RATE, f"{folder}{segment_name(msn)}",
                          epoch.started_at + (tfdt - time_base) / SAMPLE_RATE, parts,
                          map_uri=f"{folder}{INIT}",
                          # The epoch's first segment after the window of the one before.
                          discontinuity=msn == epoch.first_msn and bool(pl.segments))
            return replace(pl, segments=pl.segments + (seg,), next_msn=msn + 1)

        def made(pl: MediaPlaylist, msn: int, segment: bytes, parts: list[bytes]) -> MediaPlaylist:
            """`pl` with segment `msn`, made of `parts` (each listed, as at the live edge)."""
            listed = tuple(Part(sum(read_fragment(p).durations) / SAMPLE_RATE,
                                f"{folder}{part_name(msn, i)}") for i, p in enumerate(parts))
            return extended(pl, msn, segment, listed)

        async def stored(name: str, msn: int) -> bytes | None:
            return await self.store.get(self._epoch_key(room, name, epoch, segment_name(msn)))

        def part_key(name: str, msn: int, part: int) -> str:
            return self._epoch_key(room, name, epoch, part_name(msn, part))

        async def complete(name: str) -> None:
            pl = windows[name]
            # A playlist goes to the store with the live edge's objects and a segment with
            # the backlog (`packager.writer`): the last segments it lists may not have
            # landed. They come off here and are made again below from their parts.
            while (pl.segments and pl.segments[-1].uri.startswith(folder)
                   and await stored(name, pl.segments[-1].msn) is None):
                pl = replace(pl, segments=pl.segments[:-1], next_msn=pl.segments[-1].msn)
            while True:
                msn = pl.next_msn
                # The segment whole, or else its first part, in one round.
                data, first = await asyncio.gather(stored(name, msn),
                                                   self.store.get(part_key(name, msn, 0)))
                if data is not None:
                    pl = extended(pl, msn, data)
                    continue
                # Not stored whole: made from the parts that were. Parts go out first, so a
                # segment's may all be there while the segment waited; the crash's own
                # segment has its first ones.
                if first is None:
                    break
                pl = made(pl, msn, *await finish_cut_segment(self.store, room, name,
                                                             epoch.id, msn, first))
            windows[name] = pl

        await asyncio.gather(*(complete(name) for name in list(windows)))
        # Parts of a segment were heard: its number is taken even where it was lost.
        longest = max(windows.values(), key=lambda pl: pl.next_msn)
        reached = longest.next_msn
        for name, pl in list(windows.items()):
            if pl.next_msn == reached:
                continue
            missing = [seg for seg in longest.segments if seg.msn >= pl.next_msn]
            if pl.next_msn < epoch.first_msn or len(missing) != reached - pl.next_msn:
                log.warning("room %s: the store holds %s of epoch %s up to segment %d, the "
                            "other renditions up to %d: its window starts afresh", room, name,
                            epoch.id, pl.next_msn - 1, reached - 1)
                del windows[name]  # not contiguous with the others
                continue
            # A rendition can stand a segment short of another: a lagging store sends the
            # live edge's objects in the order they were cut, and one rendition's part can
            # be cut, and land, before the crash while another's is not. The segments it
            # lacks are silence as long as the others' (its window stays contiguous with
            # theirs and with the epoch that follows), where it would otherwise start again
            # without its window, which its listeners would hear as a jump.
            rendition = next(r for r in self.settings.renditions() if r.name == name)
            for seg in missing:
                segment, parts = silent_segment(rendition, self.settings.segment_units,
                                                seg.msn, round(seg.duration * SAMPLE_RATE))
                await asyncio.gather(
                    *(self.store.put(part_key(name, seg.msn, i), part, IMMUTABLE)
                      for i, part in enumerate(parts)),
                    self.store.put(self._epoch_key(room, name, epoch, segment_name(seg.msn)),
                                   segment, IMMUTABLE))
                pl = made(pl, seg.msn, segment, parts)
                log.warning("room %s: no audio of %s segment %d (epoch %s) reached the store "
                            "while other renditions' did: it is %.2f s of silence", room, name,
                            seg.msn, epoch.id, pl.segments[-1].duration)
            windows[name] = pl
        return max(reached, next_msn)

    @staticmethod
    def _epoch_key(room: str, rendition: str, epoch: EpochInfo, name: str) -> str:
        return room_key(room, rendition, epoch.id, name)

    def start_broadcast(self, room: str, plan: EpochPlan | None = None,
                        on_segment: Callable[[int], None] | None = None) -> Broadcast:
        """Begin an epoch of `room` (a room has one on air at a time). Without a plan, a
        new broadcast starting at media sequence 1 (for rooms with no history)."""
        check_room(room)
        current = self.broadcasts.get(room)
        if current is not None and not current._closing:
            raise BroadcastClosed(f"room {room} already has a broadcast on air")
        if not self._started:
            self._started = True
            self.writer.start()
        b = Broadcast(self, room, plan or plan_epoch(ResumePoint()), on_segment)
        self.broadcasts[room] = b
        self.hub.put(b.live)
        b._start()
        log.info("room %s: broadcast %s epoch %s on air from segment %d, store %s", room,
                 b.broadcast_id, b.epoch.id, b.epoch.first_msn, self.store.describe())
        return b

    async def flush(self, deadline: float) -> bool:
        """Wait until the store holds what was written so far (False past `deadline`)."""
        return await self.writer.drain(deadline)

    async def repair(self, room: str, broadcast: str, epochs: tuple[EpochInfo, ...]) -> int:
        """Rebuild the recording index of `epochs` from the store (after a crash)."""
        added = 0
        for r in self.settings.renditions():
            for e in epochs:
                added += await repair_epoch(self.store, room, r.name, e, self.segment_samples)
        return added

    def stopped(self, b: Broadcast) -> None:
        """An epoch has stopped: its held readers are let go now, its bytes a little later."""
        b.live.stop()
        if self.broadcasts.get(b.room) is b:
            del self.broadcasts[b.room]
        self._spawn(self._forget(b), f"release-{b.room}")

    async def _forget(self, b: Broadcast) -> None:
        # Answer from memory a little longer: edges may still ask for its last parts.
        await asyncio.sleep(RELEASE_AFTER_SECONDS)
        self.hub.remove(b.live)
        b.live.release()

    async def close(self, suspend: bool = False) -> None:
        """Stop every epoch on air (ending each broadcast unless `suspend`), and wait until
        the store holds everything or the drain deadline has passed (the rest stays
        spilled on disk for the next start)."""
        await asyncio.gather(*((b.suspend() if suspend else b.close())
                               for b in list(self.broadcasts.values())))
        await cancel_and_wait(*self._tasks)  # releases of stopped epochs: moot now
        await self.writer.close(self.settings.store_drain_seconds)
        self.encoder_pool.shutdown(wait=False, cancel_futures=True)
