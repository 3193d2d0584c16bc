"""Recordings: chunked index, composition across epochs, rebuilt from the store after a crash."""

from __future__ import annotations

from pathlib import Path

import m3u8
import numpy as np

from packager.cmaf import RenditionEncoder, SegmentReady
from packager.ladder import Rendition
from packager.recording import (
    CHUNK_SEGMENTS,
    BroadcastInfo,
    Entry,
    EpochInfo,
    RecordingComposer,
    RecordingIndex,
    chunk_key,
    epochs_key,
    parse_chunk,
    read_chunks,
    render_recording,
    repair_broadcast,
    repair_epoch,
    segment_timing,
)
from packager.store import LocalStore

T0 = 1_790_000_000.0
B = "b20260921T141320Z-0a1b2c"


def _entries(first: int, n: int, start: float) -> list[Entry]:
    return [Entry(msn, 1.92, start + (msn - first) * 1.92) for msn in range(first, first + n)]


def test_the_index_rewrites_only_its_newest_chunk() -> None:
    epoch = EpochInfo("e1-0a1b2c", T0, 1)
    index = RecordingIndex("r", "aac96", epoch)
    keys = [index.add(e)[0] for e in _entries(1, CHUNK_SEGMENTS + 2, T0)]
    assert keys[0] == keys[CHUNK_SEGMENTS - 1] == chunk_key("r", "aac96", epoch.id, 0)
    assert keys[CHUNK_SEGMENTS] == chunk_key("r", "aac96", epoch.id, 1)
    key, text = index.add(Entry(CHUNK_SEGMENTS + 3, 1.5, T0 + 100))
    assert [e.msn for e in parse_chunk(text)] == [31, 32, 33], "memory holds one chunk at most"


def test_a_recording_spans_its_epochs_with_a_discontinuity_between() -> None:
    e1, e2 = EpochInfo("e1-0a1b2c", T0, 1), EpochInfo("e2-0a1b2c", T0 + 60, 12)
    info = BroadcastInfo("r", B, ["aac96"], 2, [e1, e2])
    text = render_recording(info, "aac96", [(e1, _entries(1, 10, T0)),
                                           (e2, _entries(12, 5, T0 + 60))])
    pl = m3u8.loads(text)
    assert pl.playlist_type == "event" and not pl.is_endlist and pl.media_sequence == 1
    assert len(pl.segments) == 15
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    assert pl.segments[10].discontinuity and pl.segments[10].uri == "../../aac96/e2-0a1b2c/s12.m4s"
    assert [m.uri for m in pl.segment_map] == ["../../aac96/e1-0a1b2c/init.mp4",
                                               "../../aac96/e2-0a1b2c/init.mp4"]
    info.ended = True
    assert render_recording(info, "aac96", []).endswith("#EXT-X-ENDLIST\n")


def _segments(first_msn: int, seconds: float) -> tuple[bytes, list[SegmentReady]]:
    enc = RenditionEncoder(Rendition("aac96", "aac", 96), 6, first_msn)
    t = np.arange(int(48000 * seconds)) / 48000
    x = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    events = enc.push(np.vstack([x, x])) + enc.finish()
    return enc.init, [e for e in events if isinstance(e, SegmentReady)]


async def test_a_crashed_epoch_is_rebuilt_from_its_segments(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    epoch = EpochInfo("e2-0a1b2c", T0, 6)
    init, segments = _segments(6, 9.0)
    assert [s.msn for s in segments] == [6, 7, 8, 9, 10]
    index = RecordingIndex("r", "aac96", epoch)
    for seg in segments:
        await store.put(f"live/r/aac96/{epoch.id}/s{seg.msn}.m4s", seg.data, "immutable")
    # The crash: the index reached only the first two segments.
    for seg in segments[:2]:
        key, text = index.add(Entry(seg.msn, seg.samples / 48000, T0 + seg.start_sample / 48000))
        await store.put(key, text, "short")
    tfdt, samples = segment_timing(segments[2].data)
    assert tfdt == (6 - 1) * 15360 * 6 + segments[2].start_sample and samples == 92160

    added = await repair_epoch(store, "r", "aac96", epoch, 6 * 15360)
    assert added == 3
    entries = await read_chunks(store, "r", "aac96", epoch)
    assert [e.msn for e in entries] == [6, 7, 8, 9, 10]
    for entry, seg in zip(entries, segments, strict=True):
        assert abs(entry.start_time - (T0 + seg.start_sample / 48000)) < 0.002
        assert abs(entry.duration - seg.samples / 48000) < 1e-4
    assert await repair_epoch(store, "r", "aac96", epoch, 6 * 15360) == 0, "idempotent"


async def test_repair_closes_a_broadcast_and_writes_its_whole_recording(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    epoch = EpochInfo("e1-0a1b2c", T0, 1)
    init, segments = _segments(1, 5.0)
    await store.put(f"live/r/aac96/{epoch.id}/init.mp4", init, "immutable")
    for seg in segments:
        await store.put(f"live/r/aac96/{epoch.id}/s{seg.msn}.m4s", seg.data, "immutable")
    report = await repair_broadcast(store, "r", B, ["aac96"], 2, 6 * 15360, (epoch,), end=True)
    assert (report.epochs, report.entries_added, report.ended) == (1, 3, True)
    again = await repair_broadcast(store, "r", B, ["aac96"], 2, 6 * 15360, (epoch,), end=True)
    assert again.entries_added == 0
    info = BroadcastInfo.loads((await store.get(epochs_key("r", B))) or b"")
    assert info.ended and info.epochs == [epoch]
    stored = (tmp_path / f"live/r/{B}/aac96/recording.m3u8").read_text()
    composed = (await RecordingComposer(store).compose("r", B, "aac96")) or b""
    assert stored == composed.decode() and stored.endswith("#EXT-X-ENDLIST\n")
    pl = m3u8.loads(stored)
    assert abs(sum(s.duration for s in pl.segments) - 5.0) < 0.25
