"""Recordings: written segment by segment, composed on request, rebuilt from the store.

A broadcast's recording is every segment of every epoch it ran in. Rewriting one growing
index with each segment would upload more playlist than audio after an hour, so each epoch's
index is kept in chunks of `CHUNK_SEGMENTS` entries (`{rendition}/{epoch}/i{k}.m3u8`): only
the newest chunk is rewritten, the others never change. `{broadcast}/epochs.json` lists the
broadcast's epochs; the origin composes the recording playlist from it and the chunks (with a
discontinuity at each epoch), and the packager writes the whole playlist once when the
broadcast ends, for anyone serving the bucket directly.

A crash leaves the newest chunk behind the segments in the store; `repair_epoch` rebuilds an
epoch's chunks from the stored segments themselves (their `tfdt` gives the time, their
sample durations the length), so it is safe to run at any time and as often as wanted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from hls.http import IMMUTABLE, SHORT
from hls.names import (
    EPOCHS,
    INIT,
    RECORDING_PLAYLIST,
    index_name,
    part_name,
    room_key,
    segment_name,
)
from packager.boxes import BoxError, parse_boxes
from packager.errors import StoreError
from packager.ladder import SAMPLE_RATE
from packager.playlist import format_duration, format_pdt
from packager.store import Store

log = logging.getLogger(__name__)

CHUNK_SEGMENTS = 30  # about a minute of segments per index chunk
# Parts of a cut segment read at once: the packager cuts 9 or 10 a segment at its defaults,
# so that their reads are one round trip.
PART_READS_AT_ONCE = 12
_ENTRY = re.compile(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)\n#EXTINF:([0-9.]+),\n(s(\d+)\.m4s)\n")


@dataclass(frozen=True, slots=True)
class EpochInfo:
    """One epoch of a broadcast: where its objects are and where its timeline starts."""

    id: str
    started_at: float  # wall clock of its first sample
    first_msn: int


@dataclass(slots=True)
class BroadcastInfo:
    """`epochs.json`: what a recording is made of."""

    room: str
    broadcast: str
    renditions: list[str]
    target_duration: int
    epochs: list[EpochInfo] = field(default_factory=list)
    ended: bool = False

    def dumps(self) -> bytes:
        d = asdict(self)
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> BroadcastInfo:
        d: dict[str, Any] = json.loads(raw)
        d["epochs"] = [EpochInfo(**e) for e in d["epochs"]]
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Entry:
    msn: int
    duration: float
    start_time: float

    def text(self) -> str:
        return (f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(self.start_time)}\n"
                f"#EXTINF:{format_duration(self.duration)},\n{segment_name(self.msn)}\n")


def chunk_of(epoch: EpochInfo, msn: int) -> int:
    return (msn - epoch.first_msn) // CHUNK_SEGMENTS


def render_chunk(entries: list[Entry]) -> bytes:
    return "".join(e.text() for e in entries).encode()


def parse_chunk(raw: bytes) -> list[Entry]:
    from datetime import datetime

    out = []
    for m in _ENTRY.finditer(raw.decode()):
        start = datetime.fromisoformat(m[1]).timestamp()
        out.append(Entry(int(m[4]), float(m[2]), start))
    return out


def render_recording(info: BroadcastInfo, rendition: str,
                     chunks: list[tuple[EpochInfo, list[Entry]]]) -> str:
    """The recording's media playlist: every epoch in order, a discontinuity between them,
    ENDLIST once the broadcast has ended. URIs are relative to
    `{room}/{broadcast}/{rendition}/recording.m3u8`."""
    entries = [e for _, es in chunks for e in es]
    longest = max((e.duration for e in entries), default=float(info.target_duration))
    target = max(info.target_duration, int(longest + 0.5))
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-PLAYLIST-TYPE:EVENT",
             f"#EXT-X-MEDIA-SEQUENCE:{entries[0].msn if entries else 1}",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    first = True
    for epoch, es in chunks:
        if not es:
            continue
        if not first:
            lines.append("#EXT-X-DISCONTINUITY")
        first = False
        folder = f"../../{rendition}/{epoch.id}"
        lines.append(f'#EXT-X-MAP:URI="{folder}/{INIT}"')
        for e in es:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(e.start_time)}")
            lines.append(f"#EXTINF:{format_duration(e.duration)},")
            lines.append(f"{folder}/{segment_name(e.msn)}")
    if info.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def epochs_key(room: str, broadcast: str) -> str:
    return room_key(room, broadcast, EPOCHS)


def recording_key(room: str, broadcast: str, rendition: str | None = None) -> str:
    if rendition is None:
        return room_key(room, broadcast, RECORDING_PLAYLIST)
    return room_key(room, broadcast, rendition, RECORDING_PLAYLIST)


def chunk_key(room: str, rendition: str, epoch: str, chunk: int) -> str:
    return room_key(room, rendition, epoch, index_name(chunk))


class RecordingIndex:
    """One rendition's index for one epoch, as the packager writes it: the open chunk in
    memory (at most CHUNK_SEGMENTS entries), rewritten to the store with each segment."""

    def __init__(self, room: str, rendition: str, epoch: EpochInfo):
        self.room = room
        self.rendition = rendition
        self.epoch = epoch
        self.chunk = 0
        self.entries: list[Entry] = []

    def add(self, entry: Entry) -> tuple[str, bytes]:
        """Record a segment; return the chunk object to (re)write."""
        chunk = chunk_of(self.epoch, entry.msn)
        if chunk != self.chunk:
            self.chunk, self.entries = chunk, []
        self.entries.append(entry)
        return chunk_key(self.room, self.rendition, self.epoch.id, chunk), render_chunk(self.entries)


def segment_timing(data: bytes) -> tuple[int, int]:
    """(tfdt of the first fragment, total samples) of a stored segment."""
    base: int | None = None
    samples = 0
    for b in parse_boxes(data):
        if b.kind != "moof":
            continue
        tfdt = b.find("traf/tfdt")
        trun = b.find("traf/trun")
        if tfdt is None or trun is None:
            raise BoxError("moof lacks tfdt or trun")
        if base is None:
            version = tfdt.payload[0]
            base = int.from_bytes(tfdt.payload[4:12] if version == 1 else tfdt.payload[4:8], "big")
        count = int.from_bytes(trun.payload[4:8], "big")
        samples += sum(int.from_bytes(trun.payload[12 + 8 * i: 16 + 8 * i], "big")
                       for i in range(count))
    if base is None:
        raise BoxError("no fragment in segment")
    return base, samples


async def read_chunks(store: Store, room: str, rendition: str,
                      epoch: EpochInfo) -> list[Entry]:
    """Every entry of an epoch's index, from its chunks in order."""
    out: list[Entry] = []
    chunk = 0
    while True:
        raw = await store.get(chunk_key(room, rendition, epoch.id, chunk))
        if raw is None:
            return out
        out.extend(parse_chunk(raw))
        chunk += 1


async def repair_epoch(store: Store, room: str, rendition: str, epoch: EpochInfo,
                       segment_samples: int) -> int:
    """Rebuild an epoch's index from the segments in the store; returns how many entries
    were added. Entries for segments the store does not hold are dropped."""
    indexed = {e.msn: e for e in await read_chunks(store, room, rendition, epoch)}
    folder = room_key(room, rendition, epoch.id) + "/"
    stored = sorted(int(m[1]) for k in await store.list(folder)
                    if (m := re.fullmatch(r"s(\d+)\.m4s", k[len(folder):])))
    entries: list[Entry] = []
    added = 0
    time_base = (epoch.first_msn - 1) * segment_samples
    for msn in stored:
        entry = indexed.get(msn)
        if entry is None:
            data = await store.get(folder + segment_name(msn))
            if data is None:
                continue
            try:
                tfdt, samples = segment_timing(data)
            except BoxError as exc:
                log.warning("repair %s: skipping unreadable %s: %s", room, segment_name(msn), exc)
                continue
            entry = Entry(msn, samples / SAMPLE_RATE,
                          epoch.started_at + (tfdt - time_base) / SAMPLE_RATE)
            added += 1
        entries.append(entry)
    if not added and len(entries) == len(indexed):
        return 0
    chunks: dict[int, list[Entry]] = {}
    for e in entries:
        chunks.setdefault(chunk_of(epoch, e.msn), []).append(e)
    for chunk, es in sorted(chunks.items()):
        await store.put(chunk_key(room, rendition, epoch.id, chunk), render_chunk(es), SHORT)
    return added


class RecordingComposer:
    """Builds a recording playlist from `epochs.json` and the index chunks, for the origin.

    Chunks that are full (or belong to an epoch that has stopped) never change: they are
    kept, up to `max_chunks`, so a long recording costs one read of its newest chunk."""

    def __init__(self, store: Store, max_chunks: int = 4096):
        self.store = store
        self.max_chunks = max_chunks
        self._done: OrderedDict[str, list[Entry]] = OrderedDict()

    async def compose(self, room: str, broadcast: str, rendition: str) -> bytes | None:
        raw = await self.store.get(epochs_key(room, broadcast))
        if raw is None:
            return None
        try:
            info = BroadcastInfo.loads(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{epochs_key(room, broadcast)} is unreadable: {exc}") from exc
        if rendition not in info.renditions:
            return None
        chunks = []
        for i, epoch in enumerate(info.epochs):
            closed = info.ended or i < len(info.epochs) - 1
            chunks.append((epoch, await self._entries(room, rendition, epoch, closed)))
        return render_recording(info, rendition, chunks).encode()

    async def _entries(self, room: str, rendition: str, epoch: EpochInfo,
                       closed: bool) -> list[Entry]:
        out: list[Entry] = []
        chunk = 0
        while True:
            key = chunk_key(room, rendition, epoch.id, chunk)
            entries = self._done.get(key)
            if entries is None:
                raw = await self.store.get(key)
                if raw is None:
                    return out
                entries = parse_chunk(raw)
                if closed or len(entries) >= CHUNK_SEGMENTS:
                    self._done[key] = entries
                    while len(self._done) > self.max_chunks:
                        self._done.popitem(last=False)
            else:
                self._done.move_to_end(key)
            out.extend(entries)
            chunk += 1


@dataclass(frozen=True, slots=True)
class RepairReport:
    broadcast: str
    epochs: int
    entries_added: int
    ended: bool


async def repair_broadcast(store: Store, room: str, broadcast: str, renditions: list[str],
                           target_duration: int, segment_samples: int,
                           known: tuple[EpochInfo, ...] = (), end: bool = False) -> RepairReport:
    """Make a broadcast's recording whole from what the store holds: `epochs.json` gains
    any epoch in `known` it lacks, every epoch's index is rebuilt from its segments, and with
    `end` the broadcast is closed (ENDLIST) and its full playlist written. Idempotent."""
    raw = await store.get(epochs_key(room, broadcast))
    info = (BroadcastInfo.loads(raw) if raw is not None
            else BroadcastInfo(room, broadcast, renditions, target_duration))
    ids = {e.id for e in info.epochs}
    info.epochs = sorted([*info.epochs, *(e for e in known if e.id not in ids)],
                         key=lambda e: e.first_msn)
    added = 0
    for name in info.renditions:
        for epoch in info.epochs:
            added += await repair_epoch(store, room, name, epoch, segment_samples)
    if end:
        info.ended = True
    await store.put(epochs_key(room, broadcast), info.dumps(), SHORT)
    if info.ended:
        composer = RecordingComposer(store)
        for name in info.renditions:
            text = await composer.compose(room, broadcast, name)
            if text is not None:
                await store.put(recording_key(room, broadcast, name), text, SHORT)
    return RepairReport(broadcast, len(info.epochs), added, info.ended)


async def finish_cut_segment(store: Store, room: str, rendition: str, epoch: str,
                             msn: int, first: bytes) -> tuple[bytes, list[bytes]]:
    """The segment a crash or a stop cut short, made whole from the parts that reached the
    store, given its first part (read already): a segment is its parts end to end. The
    others are read `PART_READS_AT_ONCE` at a time, at once: a room's failover waits on
    these reads. Returns (segment, parts) once the segment is stored."""
    parts = [first]
    while True:
        start = len(parts)
        batch = await asyncio.gather(*(
            store.get(room_key(room, rendition, epoch, part_name(msn, i)))
            for i in range(start, start + PART_READS_AT_ONCE)))
        for data in batch:
            if data is None:
                break
            parts.append(data)
        if len(parts) < start + PART_READS_AT_ONCE:
            break
    segment = b"".join(parts)
    await store.put(room_key(room, rendition, epoch, segment_name(msn)), segment, IMMUTABLE)
    return segment, parts
