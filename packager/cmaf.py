"""One rendition's encoder and cutter: planar float PCM in, CMAF parts and segments out.

The cutter decides boundaries by counting frames only: a part is `part_frames` encoded
frames, a segment `segment_frames`; the last part of a segment may be shorter. `tfdt`
comes from the count of samples already written (on the grid of media sequence numbers),
never from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import av
import numpy as np

from packager.boxes import TrackConfig, fragment, init_segment, priming_samples
from packager.errors import EncodeError
from packager.ladder import SAMPLE_RATE, Rendition


@dataclass(frozen=True, slots=True)
class PartReady:
    msn: int
    index: int
    data: bytes
    samples: int
    start_sample: int
    last_in_segment: bool


@dataclass(frozen=True, slots=True)
class SegmentReady:
    msn: int
    data: bytes
    samples: int
    start_sample: int


Event = PartReady | SegmentReady
# An event and the name of the rendition it belongs to.
LadderEvent = tuple[str, Event]


@dataclass(slots=True)
class _Cut:
    msn: int
    part_index: int = 0
    segment_start: int = 0
    frames_in_segment: int = 0
    packets: list[bytes] = field(default_factory=list)
    segment_parts: list[bytes] = field(default_factory=list)


class RenditionEncoder:
    """Encodes one rendition with PyAV and cuts its packets into parts and segments."""

    def __init__(self, rendition: Rendition, segment_units: int, first_msn: int = 1):
        self.rendition = rendition
        self.segment_frames = rendition.segment_frames(segment_units)
        self.frame_size = rendition.frame_size
        layout = "stereo" if rendition.channels == 2 else "mono"
        try:
            ctx = cast(av.AudioCodecContext, av.CodecContext.create(rendition.encoder_name, "w"))
            ctx.sample_rate = SAMPLE_RATE
            ctx.layout = layout
            ctx.format = "fltp" if rendition.codec == "aac" else "flt"
            ctx.bit_rate = rendition.kbps * 1000
            ctx.open()
        except (av.FFmpegError, ValueError) as exc:
            raise EncodeError(f"cannot open {rendition.encoder_name} for {rendition.name}: {exc}") from exc
        if ctx.frame_size != self.frame_size:
            raise EncodeError(f"{rendition.encoder_name} frame size {ctx.frame_size} != {self.frame_size}")
        # The context converts to its sample format and cuts its frame size itself (PyAV
        # puts a resampler in front of every audio encoder), so blocks go to it as they come.
        self._ctx = ctx
        extradata = bytes(ctx.extradata or b"")
        try:
            priming = priming_samples(rendition.codec, extradata)
        except ValueError as exc:
            raise EncodeError(f"{rendition.name}: {exc}") from exc
        # The edit list trims the encoder's delay, so a sample fed at program time t plays
        # at media time t in every rendition (PROGRAM-DATE-TIME holds for all of them).
        self.track = TrackConfig(rendition.codec, rendition.channels, SAMPLE_RATE, self.frame_size,
                                 extradata, rendition.kbps * 1000, priming=priming)
        self.init = init_segment(self.track)
        self._cut = _Cut(first_msn)
        # tfdt runs on the room's media-sequence grid, so an epoch that resumes a room at
        # segment n starts where segment n belongs, not at zero.
        self._time_base = (first_msn - 1) * self.segment_frames * self.frame_size
        self._sequence = 0
        self._samples_in = 0
        self._samples_out = 0  # samples in emitted packets: the next part's tfdt

    def push(self, pcm: np.ndarray) -> list[Event]:
        """Encode planar float32 stereo PCM (2, n); return the parts/segments completed."""
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.float32),
                                           format="fltp", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples_in
        self._samples_in += pcm.shape[1]
        events: list[Event] = []
        try:
            for packet in self._ctx.encode(frame):
                events.extend(self._on_packet(bytes(packet)))
        except av.FFmpegError as exc:
            raise EncodeError(f"{self.rendition.name}: encoding failed: {exc}") from exc
        return events

    def samples_to_cut(self) -> int:
        """How many more input samples complete the part being cut (at least 1).

        A packet comes out `lag` frames after its frame went in: the codec's look-ahead,
        read off the encoder itself as frames fully fed less packets out (one for FFmpeg's
        AAC, none for libopus). Before the codec has shown its lag this is too small, never
        too large, so whoever waits for it is never late for a part."""
        cut, size = self._cut, self.frame_size
        emitted = self._samples_out // size + len(cut.packets)
        lag = self._samples_in // size - emitted
        to_go = min(self.rendition.part_frames - len(cut.packets),
                    self.segment_frames - cut.frames_in_segment)
        return max(1, (emitted + to_go + lag) * size - self._samples_in)

    def finish(self) -> list[Event]:
        """Flush the encoder at the end of a broadcast: pad the last frame with silence,
        drain the codec, and close the partial part and segment."""
        events: list[Event] = []
        pad = (-self._samples_in) % self.frame_size
        if pad:
            events.extend(self.push(np.zeros((2, pad), dtype=np.float32)))
        try:
            for packet in self._ctx.encode(None):
                events.extend(self._on_packet(bytes(packet)))
        except av.FFmpegError as exc:
            raise EncodeError(f"{self.rendition.name}: flushing failed: {exc}") from exc
        cut = self._cut
        if cut.packets:
            events.append(self._close_part(last=True))
        if cut.segment_parts:
            events.append(self._close_segment())
        return events

    def _on_packet(self, data: bytes) -> list[Event]:
        cut = self._cut
        cut.packets.append(data)
        cut.frames_in_segment += 1
        out: list[Event] = []
        segment_full = cut.frames_in_segment == self.segment_frames
        if len(cut.packets) == self.rendition.part_frames or segment_full:
            out.append(self._close_part(last=segment_full))
        if segment_full:
            out.append(self._close_segment())
        return out

    def _close_part(self, last: bool) -> PartReady:
        cut = self._cut
        self._sequence += 1
        n = len(cut.packets)
        data = fragment(self._sequence, self._time_base + self._samples_out, cut.packets,
                        [self.frame_size] * n)
        part = PartReady(cut.msn, cut.part_index, data, n * self.frame_size, self._samples_out, last)
        self._samples_out += n * self.frame_size
        cut.segment_parts.append(data)
        cut.packets = []
        cut.part_index += 1
        return part

    def _close_segment(self) -> SegmentReady:
        cut = self._cut
        samples = self._samples_out - cut.segment_start
        seg = SegmentReady(cut.msn, b"".join(cut.segment_parts), samples, cut.segment_start)
        self._cut = _Cut(cut.msn + 1, segment_start=self._samples_out)
        return seg


class LadderEncoder:
    """Every rendition of a ladder, fed the same program PCM in one call (one hand-off to
    an encoder thread per block, not one per rendition)."""

    def __init__(self, renditions: list[Rendition], segment_units: int, first_msn: int = 1):
        self.encoders = {r.name: RenditionEncoder(r, segment_units, first_msn) for r in renditions}

    def push(self, pcm: np.ndarray) -> list[LadderEvent]:
        """Encode a block in every rendition; events per rendition, in ladder order."""
        return [(name, ev) for name, enc in self.encoders.items() for ev in enc.push(pcm)]

    def samples_to_cut(self) -> int:
        """How many more input samples complete a part in some rendition."""
        return min(enc.samples_to_cut() for enc in self.encoders.values())

    def finish(self) -> list[LadderEvent]:
        return [(name, ev) for name, enc in self.encoders.items() for ev in enc.finish()]


def silent_segment(rendition: Rendition, segment_units: int, msn: int,
                   samples: int) -> tuple[bytes, list[bytes]]:
    """Segment `msn` of a rendition, as parts, holding at least `samples` of silence (whole
    frames; the codec's own delay comes out as silence too): what stands in for audio
    that never reached the store in one rendition while another kept it, so that their
    timelines stay the same length. Returns (segment, parts)."""
    enc = RenditionEncoder(rendition, segment_units, msn)
    events = enc.push(np.zeros((2, max(1, samples)), dtype=np.float32)) + enc.finish()
    parts = [e.data for e in events if isinstance(e, PartReady) and e.msn == msn]
    return b"".join(parts), parts
