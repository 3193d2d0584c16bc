"""Box layout of the CMAF init segment and fragments, against golden bytes and a parser."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from packager.boxes import (
    BoxError,
    TrackConfig,
    fragment,
    init_segment,
    parse_boxes,
    priming_samples,
    read_fragment,
)
from packager.cmaf import PartReady, RenditionEncoder, SegmentReady
from packager.ladder import Rendition

GOLDEN = Path(__file__).parent / "golden"
# As the encoders make them: AAC primes with 1024 samples, Opus states a pre-skip of 312.
# The goldens carry an edit list since both are trimmed (edts/elst after tkhd).
AAC = TrackConfig("aac", 2, 48000, 1024, bytes.fromhex("1190"), 96000, priming=1024)
OPUS_HEAD = b"OpusHead" + bytes([1, 2]) + struct.pack("<HIhB", 312, 48000, 0, 0)
OPUS = TrackConfig("opus", 2, 48000, 960, OPUS_HEAD, 64000, priming=312)


@pytest.mark.parametrize("name,track", [("init_aac", AAC), ("init_opus", OPUS)])
def test_init_segment_matches_golden_bytes(name: str, track: TrackConfig) -> None:
    assert init_segment(track) == (GOLDEN / f"{name}.mp4").read_bytes()


def test_fragment_matches_golden_bytes() -> None:
    frag = fragment(7, 92160, [b"\x01\x02\x03", b"\x04\x05"], [1024, 1024])
    assert frag == (GOLDEN / "fragment.m4s").read_bytes()


def test_init_segment_is_a_cmaf_header_without_samples() -> None:
    boxes = parse_boxes(init_segment(AAC))
    assert [b.kind for b in boxes] == ["ftyp", "moov"]
    ftyp = boxes[0].payload
    assert ftyp[:4] == b"iso6" and b"cmfc" in ftyp[8:]
    moov = boxes[1]
    trex = moov.find("mvex/trex")
    assert trex is not None
    assert struct.unpack(">IIIII", trex.payload[4:24]) == (1, 1, 1024, 0, 0)
    stsz = moov.find("trak/mdia/minf/stbl/stsz")
    assert stsz is not None and struct.unpack(">II", stsz.payload[4:12]) == (0, 0)
    mdhd = moov.find("trak/mdia/mdhd")
    assert mdhd is not None and struct.unpack(">I", mdhd.payload[12:16])[0] == 48000
    entry = moov.find("trak/mdia/minf/stbl/stsd/mp4a")
    assert entry is not None and entry.find("esds") is not None


def test_opus_init_carries_dops_in_big_endian() -> None:
    entry = parse_boxes(init_segment(OPUS))[1].find("trak/mdia/minf/stbl/stsd/Opus")
    assert entry is not None
    dops = entry.find("dOps")
    assert dops is not None
    assert struct.unpack(">BBHIhB", dops.payload) == (0, 2, 312, 48000, 0, 0)


@pytest.mark.parametrize("track,priming", [(AAC, 1024), (OPUS, 312)])
def test_init_trims_the_encoder_delay_with_an_edit_list(track: TrackConfig, priming: int) -> None:
    trak = parse_boxes(init_segment(track))[1].find("trak")
    assert trak is not None and [c.kind for c in trak.children] == ["tkhd", "edts", "mdia"]
    elst = trak.find("edts/elst")
    assert elst is not None
    # One edit, to the end of the track (duration 0), starting `priming` samples in, rate 1.
    assert struct.unpack(">IIIiHH", elst.payload) == (0, 1, 0, priming, 1, 0)
    assert priming_samples(track.codec, track.extradata) == priming


def test_without_priming_there_is_no_edit_list() -> None:
    trak = parse_boxes(init_segment(replace(AAC, priming=0)))[1].find("trak")
    assert trak is not None and trak.find("edts") is None


def test_fragment_round_trips_through_the_parser() -> None:
    samples = [bytes([i]) * (10 + i) for i in range(10)]
    info = read_fragment(fragment(3, 20480, samples, [1024] * 10))
    assert info.sequence == 3 and info.base_time == 20480
    assert info.durations == (1024,) * 10
    assert info.sizes == tuple(len(s) for s in samples)


def test_parser_rejects_truncated_and_lying_boxes() -> None:
    frag = fragment(1, 0, [b"abc"], [1024])
    with pytest.raises(BoxError):
        parse_boxes(frag[:-1])
    with pytest.raises(BoxError):
        parse_boxes(b"\x00\x00\x00\x04free")
    with pytest.raises(BoxError):
        read_fragment(frag + frag)


def _encode(rendition: Rendition, seconds: float) -> tuple[RenditionEncoder, list[PartReady], list[SegmentReady]]:
    enc = RenditionEncoder(rendition, segment_units=6)
    t = np.arange(int(48000 * seconds)) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    pcm = np.vstack([tone, tone])
    events = []
    for i in range(0, pcm.shape[1], 960):
        events += enc.push(pcm[:, i : i + 960])
    events += enc.finish()
    return (enc, [e for e in events if isinstance(e, PartReady)],
            [e for e in events if isinstance(e, SegmentReady)])


@pytest.mark.parametrize("rendition,part_frames,parts_per_segment", [
    (Rendition("aac96", "aac", 96), 10, 9),
    (Rendition("opus64", "opus", 64), 10, 10),
])
def test_encoder_cuts_parts_and_segments_on_the_shared_grid(
    rendition: Rendition, part_frames: int, parts_per_segment: int
) -> None:
    enc, parts, segments = _encode(rendition, 4.2)
    # Segments hold 92 160 samples (1.92 s) in every rendition; tfdt counts samples.
    assert [s.start_sample for s in segments[:2]] == [0, 92160]
    assert segments[0].samples == 92160
    first = [p for p in parts if p.msn == 1]
    assert len(first) == parts_per_segment
    assert b"".join(p.data for p in first) == segments[0].data
    base = 0
    for p in parts:
        info = read_fragment(p.data)
        assert info.base_time == base == p.start_sample
        base += sum(info.durations)
    assert all(len(read_fragment(p.data).durations) == part_frames
               for p in parts if not p.last_in_segment)


@pytest.mark.parametrize("rendition,codec", [
    (Rendition("aac48", "aac", 48), "aac"), (Rendition("opus64", "opus", 64), "opus")])
def test_init_plus_segments_decode_with_ffmpeg(rendition: Rendition, codec: str) -> None:
    enc, _, segments = _encode(rendition, 3.0)
    with av.open(io.BytesIO(enc.init + b"".join(s.data for s in segments))) as c:
        assert c.streams.audio[0].codec_context.name == codec
        samples = sum(f.samples for f in c.decode(audio=0))
    # 3 s plus at most one frame of padding and the encoder's priming.
    assert 3 * 48000 <= samples <= 3 * 48000 + 2 * rendition.frame_size
