"""Live broadcasts: program PCM in, CMAF parts, LL-HLS playlists and a recording out.

`Packager` owns the store and the in-process `Hub` the origin reads. Each `Broadcast`
encodes every rendition of the ladder off the event loop, publishes each part to the hub
the moment it is cut, and queues every object for the store through `StoreWriter`s that
retry until the store takes them.
Objects are named by `hls.names`, whose docstring draws the store layout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque

import numpy as np
from prometheus_client import Counter, Gauge

from hls.http import IMMUTABLE, SHORT
from hls.names import (
    INIT,
    LIVE_PLAYLIST,
    MASTER,
    RECORDING_PLAYLIST,
    ROOM_INFO,
    STATE,
    check_room,
    part_name,
    room_key,
    segment_name,
)
from packager.cmaf import PartReady, RenditionEncoder, SegmentReady
from packager.errors import BroadcastClosed
from packager.ladder import GRID_SAMPLES, PART_TARGET_SECONDS, SAMPLE_RATE, Rendition
from packager.live import Hub, LiveRoom, dumps_state
from packager.playlist import (
    MediaPlaylist,
    Part,
    PlaylistBuilder,
    Variant,
    render_media,
    render_multivariant,
    target_duration_for,
)
from packager.settings import PackagerSettings
from packager.store import Store, StoreWriter, open_store

log = logging.getLogger(__name__)

PARTS_CUT = Counter("townsquare_packager_parts_total", "Parts cut", ["rendition"])
SEGMENTS_CUT = Counter("townsquare_packager_segments_total", "Segments cut", ["rendition"])
BROADCASTS_LIVE = Gauge("townsquare_packager_broadcasts_live", "Broadcasts on air")

# The recording index is rewritten with every segment for ~10 minutes (300 × 1.92 s), then
# every 30 segments (~1 min): rewriting a three-hour index every two seconds would upload
# more playlist than audio.
RECORDING_INDEX_EVERY_SEGMENT_UNTIL = 300
RECORDING_INDEX_INTERVAL = 30


class Broadcast:
    """One live broadcast of one room.

    `feed()` takes program audio: float32 numpy array shaped (2, n), planar stereo at
    48 kHz, values in [-1, 1]. It never blocks on encoding or storage. The caller owns the
    program clock (it paces feeding at real time); the broadcast counts samples.
    `close()` ends the broadcast: ENDLIST on the live playlists and a complete recording.
    """

    def __init__(self, packager: Packager, room: str, broadcast_id: str):
        s = packager.settings
        self.packager = packager
        self.room = room
        self.broadcast_id = broadcast_id
        self.renditions: list[Rendition] = s.renditions()
        self.base = room_key(room, broadcast_id)
        self.started_at = time.time()
        self.samples_fed = 0
        segment_seconds = s.segment_units * GRID_SAMPLES / SAMPLE_RATE
        td = target_duration_for(segment_seconds)
        self._encoders = {r.name: RenditionEncoder(r, s.segment_units) for r in self.renditions}
        self._builders = {
            r.name: PlaylistBuilder(
                MediaPlaylist(td, PART_TARGET_SECONDS, INIT, preload_hint=part_name(1, 0)),
                s.live_window_segments,
            )
            for r in self.renditions
        }
        self.live = LiveRoom(room, broadcast_id, self.renditions,
                             {n: b.playlist for n, b in self._builders.items()})
        retry = s.store_retry_max_seconds
        self._media = {r.name: StoreWriter(packager.store, f"{room}-{r.name}", retry)
                       for r in self.renditions}
        self._meta = StoreWriter(packager.store, f"{room}-meta", retry)
        self._queue: deque[np.ndarray] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._announced = False
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    # --- public ------------------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> None:
        if self._closing:
            raise BroadcastClosed(f"broadcast {self.broadcast_id} of {self.room} has ended")
        if pcm.ndim != 2 or pcm.shape[0] != 2:
            raise ValueError(f"expected planar stereo (2, n), got shape {pcm.shape}")
        self._queue.append(pcm)
        self.samples_fed += pcm.shape[1]
        self._wake.set()

    async def close(self) -> None:
        if self._closing:
            if self._task:
                await asyncio.shield(self._task)
            return
        self._closing = True
        self._wake.set()
        if self._task:
            await asyncio.shield(self._task)

    # --- internals ---------------------------------------------------------------------
    def _start(self) -> None:
        for r in self.renditions:
            enc = self._encoders[r.name]
            self.live.renditions[r.name].init = enc.init
            self._media[r.name].put(f"{self.base}/{r.name}/{INIT}", enc.init, IMMUTABLE)
        BROADCASTS_LIVE.inc()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"broadcast-{self.room}")

    def _write_masters(self) -> None:
        live = render_multivariant([Variant(r, f"{self.broadcast_id}/{r.name}/{LIVE_PLAYLIST}")
                                    for r in self.renditions]).encode()
        rec = render_multivariant([Variant(r, f"{r.name}/{RECORDING_PLAYLIST}")
                                   for r in self.renditions]).encode()
        self._meta.put(f"{self.base}/{RECORDING_PLAYLIST}", rec, SHORT)
        self._meta.put(room_key(self.room, MASTER), live, SHORT)
        self._meta.put(room_key(self.room, ROOM_INFO),
                       json.dumps({"broadcast_id": self.broadcast_id,
                                   "started_at": self.started_at}).encode(), "no-cache")

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._queue:
                    blocks = list(self._queue)
                    self._queue.clear()
                    pcm = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
                    events = await asyncio.to_thread(self._encode, pcm)
                    self._publish(events)
                if self._closing and not self._queue:
                    break
            self._publish(await asyncio.to_thread(self._finish))
            self._end()
            await self._drain()
        except Exception:
            log.exception("broadcast %s/%s failed", self.room, self.broadcast_id)
            raise
        finally:
            self.closed = True
            BROADCASTS_LIVE.dec()

    def _encode(self, pcm: np.ndarray) -> list[tuple[str, PartReady | SegmentReady]]:
        return [(n, ev) for n, enc in self._encoders.items() for ev in enc.push(pcm)]

    def _finish(self) -> list[tuple[str, PartReady | SegmentReady]]:
        return [(n, ev) for n, enc in self._encoders.items() for ev in enc.finish()]

    def _publish(self, events: list[tuple[str, PartReady | SegmentReady]]) -> None:
        if not events:
            return
        for name, ev in events:
            b = self._builders[name]
            lr = self.live.renditions[name]
            writer = self._media[name]
            if isinstance(ev, PartReady):
                uri = part_name(ev.msn, ev.index)
                nxt = part_name(ev.msn + 1, 0) if ev.last_in_segment else part_name(ev.msn, ev.index + 1)
                pl = b.add_part(Part(ev.samples / SAMPLE_RATE, uri),
                                self.started_at + ev.start_sample / SAMPLE_RATE, nxt)
                lr.remember(uri, ev.data)
                writer.put(f"{self.base}/{name}/{uri}", ev.data, IMMUTABLE)
                PARTS_CUT.labels(name).inc()
            else:
                uri = segment_name(ev.msn)
                pl = b.close_segment(uri, b.playlist.preload_hint)
                lr.remember(uri, ev.data)
                writer.put(f"{self.base}/{name}/{uri}", ev.data, IMMUTABLE)
                # A plain live playlist for anyone serving the bucket directly, and the
                # recording's index. The index grows with the broadcast, so past its first
                # minutes it is rewritten once a minute instead of every segment; segments
                # themselves are stored as they are cut whatever happens to the index.
                n = len(b.all_segments)
                if n <= RECORDING_INDEX_EVERY_SEGMENT_UNTIL or n % RECORDING_INDEX_INTERVAL == 0:
                    writer.put(f"{self.base}/{name}/{RECORDING_PLAYLIST}",
                               render_media(b.recording()).encode(), SHORT)
                writer.put(f"{self.base}/{name}/{LIVE_PLAYLIST}", render_media(pl).encode(), SHORT)
                SEGMENTS_CUT.labels(name).inc()
            lr.playlist = pl
        self.live.touch({name for name, _ in events})
        if not self._announced and all(b.playlist.segments for b in self._builders.values()):
            # The room's entry point appears once every rendition has a whole segment:
            # players that ignore parts (ffmpeg, older ones) cannot start on less.
            self._announced = True
            self._write_masters()
        self._put_state()

    def _put_state(self) -> None:
        if self.packager.settings.publish_state:
            self._meta.put(f"{self.base}/{STATE}", dumps_state(self.live), "no-cache")

    def _end(self) -> None:
        if not self._announced:
            self._announced = True
            self._write_masters()
        for name, b in self._builders.items():
            pl = b.end()
            self.live.renditions[name].playlist = pl
            rec = render_media(b.recording()).encode()
            self._media[name].put(f"{self.base}/{name}/{RECORDING_PLAYLIST}", rec, IMMUTABLE)
            self._media[name].put(f"{self.base}/{name}/{LIVE_PLAYLIST}", render_media(pl).encode(), SHORT)
        self.live.touch()
        self._put_state()

    async def _drain(self) -> None:
        writers = [*self._media.values(), self._meta]
        await asyncio.gather(*(w.drain() for w in writers))
        for w in writers:
            await w.close()


class Packager:
    """Starts broadcasts and holds what the origin needs to serve them live."""

    def __init__(self, settings: PackagerSettings, store: Store | None = None,
                 hub: Hub | None = None):
        settings.renditions()  # fail early on a bad ladder
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.hub = hub if hub is not None else Hub()
        self.broadcasts: dict[str, Broadcast] = {}

    def start_broadcast(self, room: str) -> Broadcast:
        """Begin a new broadcast in `room` (a room has one broadcast on air at a time)."""
        check_room(room)
        current = self.broadcasts.get(room)
        if current is not None and not current._closing:
            raise BroadcastClosed(f"room {room} already has a broadcast on air")
        bid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        b = Broadcast(self, room, bid)
        self.broadcasts[room] = b
        self.hub.put(b.live)
        b._start()
        log.info("room %s: broadcast %s on air, store %s", room, bid, self.store.describe())
        return b

    async def close(self) -> None:
        """End every broadcast on air and wait until the store holds all of it."""
        await asyncio.gather(*(b.close() for b in self.broadcasts.values()))
