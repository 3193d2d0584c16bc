"""ISO BMFF boxes for CMAF audio: the init segment, fragments, and a parser for both.

Written by hand rather than through PyAV's mp4 muxer because a live part must be cut at
an exact sample count shared by every rendition and published the moment its last frame
is encoded; the muxer cuts by duration and emits a fragment only once the next packet
arrives, with no way to flush. Everything here is pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
# Boxes whose payload is a sequence of child boxes (after any fixed header we skip).
_CONTAINERS = {b"moov", b"trak", b"edts", b"mdia", b"minf", b"dinf", b"stbl", b"mvex", b"moof",
               b"traf"}


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _descriptor(tag: int, body: bytes) -> bytes:
    # MPEG-4 descriptors use a 7-bit-per-byte length; four bytes cover any esds we write.
    n = len(body)
    size = bytes([0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F])
    return bytes([tag]) + size + body


def esds(audio_specific_config: bytes, bitrate: int) -> bytes:
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BBBHII", 0x40, 0x15, 0, 0, bitrate, bitrate)  # AAC, audio stream
        + _descriptor(0x05, audio_specific_config),
    )
    es = _descriptor(0x03, struct.pack(">HB", 1, 0) + decoder_config + _descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)


def dops_from_opus_head(opus_head: bytes) -> bytes:
    """Turn libopus's `OpusHead` extradata (little-endian) into a `dOps` box (big-endian)."""
    if len(opus_head) < 19 or opus_head[:8] != b"OpusHead":
        raise ValueError("Opus extradata is not an OpusHead packet")
    _ver, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", opus_head, 8)
    if family != 0:
        raise ValueError("only channel mapping family 0 (mono/stereo) is supported")
    return box(b"dOps", struct.pack(">BBHIhB", 0, channels, pre_skip, rate, gain, family))


def _audio_sample_entry(kind: bytes, channels: int, rate: int, *children: bytes) -> bytes:
    return box(
        kind,
        b"\x00" * 6 + struct.pack(">H", 1),  # reserved, data_reference_index
        struct.pack(">II", 0, 0),
        struct.pack(">HHHH", channels, 16, 0, 0),
        struct.pack(">I", rate << 16),
        *children,
    )


@dataclass(frozen=True, slots=True)
class TrackConfig:
    """What the init segment says about the one audio track."""

    codec: str  # "aac" or "opus"
    channels: int
    sample_rate: int
    frame_size: int
    extradata: bytes
    bitrate: int
    track_id: int = 1
    # Samples of encoder delay at the start of the stream (AAC priming, Opus pre-skip): the
    # edit list starts the presentation after them. 0 writes no edit list.
    priming: int = 0

    def sample_entry(self) -> bytes:
        if self.codec == "aac":
            child = esds(self.extradata, self.bitrate)
            return _audio_sample_entry(b"mp4a", self.channels, self.sample_rate, child)
        if self.codec == "opus":
            child = dops_from_opus_head(self.extradata)
            return _audio_sample_entry(b"Opus", self.channels, self.sample_rate, child)
        raise ValueError(f"unsupported codec {self.codec!r}")


def edit_list(priming: int) -> bytes:
    """`edts` with one `elst` entry that starts the presentation `priming` samples into the
    media (in the media timescale), for the rest of the track: a segment_duration of 0
    means "to the end", as in fragmented files the duration is not known up front."""
    if not 0 <= priming < 2**31:
        raise ValueError(f"priming must be 0..2^31-1 samples, got {priming}")
    elst = full_box(b"elst", 0, 0, struct.pack(">IIiHH", 1, 0, priming, 1, 0))
    return box(b"edts", elst)


def priming_samples(codec: str, extradata: bytes) -> int:
    """The encoder delay an edit list must trim: FFmpeg's AAC encoder primes with one frame
    (1024 samples; its first packet has pts -1024); Opus states its pre-skip in OpusHead, and
    the edit list repeats it (Opus in ISOBMFF §4.4), so both renditions start on the same
    sample."""
    if codec == "aac":
        return 1024
    if codec == "opus":
        if len(extradata) < 12 or extradata[:8] != b"OpusHead":
            raise ValueError("Opus extradata is not an OpusHead packet")
        return int(struct.unpack_from("<H", extradata, 10)[0])
    raise ValueError(f"unsupported codec {codec!r}")


def init_segment(t: TrackConfig) -> bytes:
    """`ftyp` + `moov` with an empty sample table and `mvex`: a CMAF header."""
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"mp41")
    mvhd = full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100), b"\x00" * 10, _MATRIX, b"\x00" * 24,
        struct.pack(">I", t.track_id + 1),
    )
    tkhd = full_box(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", 0, 0, t.track_id, 0, 0),
        b"\x00" * 8, struct.pack(">HHHH", 0, 1, 0x0100, 0), _MATRIX, struct.pack(">II", 0, 0),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, t.sample_rate, 0, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, b"soun"), b"\x00" * 12, b"townsquare\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), t.sample_entry()),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    minf = box(b"minf", full_box(b"smhd", 0, 0, struct.pack(">HH", 0, 0)), dinf, stbl)
    edts = edit_list(t.priming) if t.priming else b""
    trak = box(b"trak", tkhd, edts, box(b"mdia", mdhd, hdlr, minf))
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", t.track_id, 1, t.frame_size, 0, 0))
    return ftyp + box(b"moov", mvhd, trak, box(b"mvex", trex))


def fragment(sequence: int, base_time: int, samples: list[bytes], durations: list[int],
             track_id: int = 1) -> bytes:
    """One `moof` + `mdat` pair carrying `samples`, the first decoded at `base_time`."""
    if not samples or len(samples) != len(durations):
        raise ValueError("a fragment needs at least one sample and one duration per sample")
    entries = b"".join(struct.pack(">II", d, len(s))
                       for d, s in zip(durations, samples, strict=True))
    # data_offset counts from the moof's first byte to the first sample byte.
    trun_len = 8 + 4 + 8 + len(entries)
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", base_time))
    traf_len = 8 + len(tfhd) + len(tfdt) + trun_len
    moof_len = 8 + 16 + traf_len
    trun = full_box(b"trun", 0, 0x000301, struct.pack(">Ii", len(samples), moof_len + 8), entries)
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), box(b"traf", tfhd, tfdt, trun))
    assert len(moof) == moof_len
    return moof + box(b"mdat", *samples)


# --- parsing ---------------------------------------------------------------------------

@dataclass(slots=True)
class Box:
    kind: str
    payload: bytes
    children: list[Box] = field(default_factory=list)

    def find(self, path: str) -> Box | None:
        """The first descendant at a slash-separated path of box types, e.g. 'traf/tfdt'."""
        head, _, rest = path.partition("/")
        for child in self.children:
            if child.kind == head:
                return child if not rest else child.find(rest)
        return None


class BoxError(ValueError):
    """Bytes that are not a well-formed sequence of boxes."""


def parse_boxes(data: bytes) -> list[Box]:
    out: list[Box] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 8:
            raise BoxError(f"truncated box header at offset {pos}")
        size, kind_raw = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if len(data) - pos < 16:
                raise BoxError(f"truncated large box header at offset {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        if size < header or pos + size > len(data):
            raise BoxError(f"box {kind_raw!r} at offset {pos} claims {size} bytes")
        payload = data[pos + header : pos + size]
        b = Box(kind_raw.decode("latin-1"), payload)
        if kind_raw in _CONTAINERS:
            b.children = parse_boxes(payload)
        elif kind_raw == b"stsd":
            b.children = parse_boxes(payload[8:])
        elif kind_raw in (b"mp4a", b"Opus"):
            b.children = parse_boxes(payload[28:])
        elif kind_raw == b"dref":
            b.children = parse_boxes(payload[8:])
        out.append(b)
        pos += size
    return out


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    sequence: int
    base_time: int
    durations: tuple[int, ...]
    sizes: tuple[int, ...]
    data_offset: int
    mdat_size: int


def read_fragment(data: bytes) -> FragmentInfo:
    """Check one moof+mdat pair and return what its boxes say."""
    boxes = parse_boxes(data)
    if [b.kind for b in boxes] != ["moof", "mdat"]:
        raise BoxError(f"expected moof+mdat, got {[b.kind for b in boxes]}")
    moof, mdat = boxes
    mfhd = moof.find("mfhd")
    tfdt = moof.find("traf/tfdt")
    trun = moof.find("traf/trun")
    if mfhd is None or tfdt is None or trun is None:
        raise BoxError("moof lacks mfhd, tfdt or trun")
    (seq,) = struct.unpack_from(">I", mfhd.payload, 4)
    version = tfdt.payload[0]
    base = struct.unpack_from(">Q" if version == 1 else ">I", tfdt.payload, 4)[0]
    flags = int.from_bytes(trun.payload[1:4], "big")
    count, offset = struct.unpack_from(">Ii", trun.payload, 4)
    if flags != 0x000301:
        raise BoxError(f"unexpected trun flags {flags:#x}")
    entries = [struct.unpack_from(">II", trun.payload, 12 + 8 * i) for i in range(count)]
    durations = tuple(e[0] for e in entries)
    sizes = tuple(e[1] for e in entries)
    moof_size = 8 + len(moof.payload)
    if offset != moof_size + 8 or sum(sizes) != len(mdat.payload):
        raise BoxError("trun data offset or sample sizes do not match the mdat")
    return FragmentInfo(seq, base, durations, sizes, offset, len(mdat.payload))
