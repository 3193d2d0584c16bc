"""PROGRAM-DATE-TIME names the moment the audio was heard, in every rendition.

The test signal beeps (1 kHz) at the start of every wall-clock second. It is played into a
speaker's jitter buffer, mixed by the program clock into a real broadcast, encoded, cut and
stored; a stored segment is decoded (PyAV, the same libavformat ffmpeg uses, edit lists
honoured) and the beep's onset, placed on the playlist's PDT timeline, must sit on a whole
second. A PDT stamped when the mix went out is one jitter buffer late (~0.1 s); AAC without
its edit list is another 21 ms late.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from datetime import datetime
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.capture import play
from ingest.jitter import JitterBuffer
from ingest.mixer import Mixer, ProgramClock
from ingest.sources import TestSignal as MarkerSignal
from packager.boxes import parse_boxes
from packager.live import LiveRoom
from packager.pipeline import Packager
from packager.playlist import render_media
from packager.settings import PackagerSettings

SR = 48_000
# ±20 ms: the beep is found to a sample; what is left is the jitter buffer steering within
# its band and the event loop's wake-ups on a loaded 2-core machine.
TOLERANCE = 0.020


def _onsets(blob: bytes) -> list[float]:
    """Seconds into the decoded media (counted from the first sample after the edit list's
    trim) of each beep in `blob`."""
    with av.open(io.BytesIO(blob), "r") as c:
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
        time_base = float(stream.time_base or 0)  # the stream is gone once the file closes
    first = frames[0].pts
    assert first is not None and time_base > 0
    pcm = np.concatenate([f.to_ndarray()[0] for f in frames])
    # The voice stays under 0.35 × 1.75 × 0.45 ≈ 0.28 before headroom; the beep reaches 0.5.
    loud = np.flatnonzero(np.abs(pcm) > 0.3)
    assert loud.size, "no beep in the segments"
    starts = [int(loud[0])] + [int(b) for a, b in itertools.pairwise(loud) if b - a > SR // 2]
    return [(first + i) * time_base for i in starts]


async def _broadcast(tmp: Path, seconds: float) -> tuple[dict[str, str], dict[str, bytes]]:
    """Run the demo room's path (signal → jitter buffer → mixer → program clock → broadcast)
    for `seconds`; return each rendition's playlist text and init + second segment."""
    settings = PackagerSettings(data_dir=tmp / "data", publish_state=False)
    packager = Packager(settings)
    await packager.start()
    broadcast = packager.start_broadcast("clockroom")
    mixer = Mixer()
    buffer = JitterBuffer(target_ms=100.0)  # the policy's target for a local speaker
    mixer.add("local-1", buffer)
    clock = ProgramClock(mixer.render, broadcast.feed, anchor=broadcast.anchor,
                         capture_delay=mixer.capture_delay)
    stop = asyncio.Event()
    clock.start()
    speaker = asyncio.create_task(play(MarkerSignal(), buffer.push, stop))
    live: LiveRoom = broadcast.live
    try:
        while min(len(lr.playlist.segments) for lr in live.renditions.values()) < 3:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await speaker
        await clock.stop()
    texts = {}
    blobs = {}
    for name, lr in live.renditions.items():
        texts[name] = render_media(lr.playlist)
        assert lr.init is not None
        # Segments 2 and 3 (1.92–5.76 s): past the jitter buffer's first fill, two beeps.
        blobs[name] = lr.init + b"".join(lr.recent[seg.uri.rsplit("/", 1)[1]]
                                         for seg in lr.playlist.segments[1:3])
    await packager.close()
    return texts, blobs


def _pdt_of_second_segment(text: str) -> float:
    stamps = [line.split(":", 1)[1] for line in text.splitlines()
              if line.startswith("#EXT-X-PROGRAM-DATE-TIME:")]
    return datetime.fromisoformat(stamps[1]).timestamp()


@pytest.fixture(scope="module")
def broadcast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str],
                                                                   dict[str, bytes]]:
    return asyncio.run(_broadcast(tmp_path_factory.mktemp("clock"), 7.0))


@pytest.mark.parametrize("rendition", ["aac96", "opus64"])
def test_a_beep_heard_at_a_whole_second_is_stamped_at_that_second(
        broadcast_run: tuple[dict[str, str], dict[str, bytes]], rendition: str) -> None:
    texts, blobs = broadcast_run
    pdt = _pdt_of_second_segment(texts[rendition])
    media_start = _segment_media_start(blobs[rendition])
    heard = [pdt + (onset - media_start) for onset in _onsets(blobs[rendition])]
    errors = sorted(t - round(t) for t in heard)
    print(f"{rendition}: beeps {[round(t % 60, 4) for t in heard]}, off the second by "
          f"{[round(e * 1000, 1) for e in errors]} ms")
    assert len(errors) >= 2
    # The median beep: one beep can be moved by a stalled event loop on a loaded machine.
    assert abs(errors[len(errors) // 2]) <= TOLERANCE


def test_aac_and_opus_play_the_beep_at_the_same_moment(
        broadcast_run: tuple[dict[str, str], dict[str, bytes]]) -> None:
    _, blobs = broadcast_run
    aac = _onsets(blobs["aac96"])
    opus = _onsets(blobs["opus64"])
    # Both renditions start on the same grid; their edit lists trim 1024 and 312 samples. A
    # beep within those first samples of the window is found in one rendition only, and a beep
    # the event loop broke up with a gap (a loaded machine) starts where each codec smears
    # the break: each beep is paired with the other rendition's nearest, and the median pair
    # must agree, as the median beep must sit on its second above.
    gaps = sorted(min(abs(a - o) for o in opus) for a in aac)
    assert len(gaps) >= 2 and abs(len(aac) - len(opus)) <= 1, (aac, opus)
    assert gaps[len(gaps) // 2] <= 0.003, (aac, opus)


def _segment_media_start(blob: bytes) -> float:
    """Where the segment starts on the media timeline: the tfdt of its first fragment (the
    playlist's PDT names that sample; the edit list's trim moves decoded media, not it)."""
    boxes = parse_boxes(blob)
    moof = next(b for b in boxes if b.kind == "moof")
    tfdt = moof.find("traf/tfdt")
    assert tfdt is not None
    return int.from_bytes(tfdt.payload[4:12], "big") / SR
