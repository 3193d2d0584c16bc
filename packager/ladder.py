"""The rendition ladder and the timing grid every rendition shares.

All renditions run at 48 kHz. AAC frames hold 1024 samples and Opus frames 960; both
divide 15 360 samples (320 ms), so a segment made of whole 320 ms units starts at the
same media time in every rendition and one media sequence number means one moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hls.names import is_rendition_name

SAMPLE_RATE = 48_000
GRID_SAMPLES = 15_360  # lcm(1024, 960)
DEFAULT_LADDER = "aac96:aac:96:2,aac48:aac:48:2,opus64:opus:64:2"

_FRAME_SIZE = {"aac": 1024, "opus": 960}
# Frames per part: 10 × 1024 = 213.3 ms and 10 × 960 = 200 ms, both ≥ 85 % of the part
# target, the longest of them rounded up. A segment (90 AAC or 96 Opus frames) is 9 whole
# AAC parts, or 9 Opus parts and a last one of 6 frames (a segment's last part may be
# short). The part target sets the latency floor: players hold back 3 part targets (PART-
# HOLD-BACK) and a part is published once whole, so shorter parts are heard sooner, and
# every listener then asks for a playlist and a part that much more often.
_PART_FRAMES = {"aac": 10, "opus": 10}
_CODECS = {"aac": "mp4a.40.2", "opus": "opus"}
_PYAV_CODEC = {"aac": "aac", "opus": "libopus"}
PART_TARGET_SECONDS = math.ceil(
    max(_PART_FRAMES[c] * _FRAME_SIZE[c] for c in _FRAME_SIZE) / SAMPLE_RATE * 1e5) / 1e5


class LadderError(ValueError):
    """A ladder description that cannot be used."""


@dataclass(frozen=True, slots=True)
class Rendition:
    name: str
    codec: str  # "aac" or "opus"
    kbps: int
    channels: int = 2

    @property
    def frame_size(self) -> int:
        return _FRAME_SIZE[self.codec]

    @property
    def part_frames(self) -> int:
        return _PART_FRAMES[self.codec]

    @property
    def codecs_attr(self) -> str:
        """The CODECS value for the multivariant playlist: `opus` is the registered codecs
        string (MP4RA, WebCodecs, MSE); `Opus` is only the sample entry 4CC."""
        return _CODECS[self.codec]

    @property
    def encoder_name(self) -> str:
        return _PYAV_CODEC[self.codec]

    @property
    def bandwidth(self) -> int:
        # Peak bits per second including fMP4 overhead (~8 % for small audio fragments).
        return int(self.kbps * 1000 * 1.08) + 2000

    def segment_frames(self, segment_units: int) -> int:
        return segment_units * GRID_SAMPLES // self.frame_size


def parse_ladder(text: str) -> list[Rendition]:
    """Parse `name:codec:kbps[:channels],...` into renditions, checking each field."""
    out: list[Rendition] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) not in (3, 4):
            raise LadderError(f"rendition {item!r} must be name:codec:kbps[:channels]")
        name, codec, kbps = fields[0], fields[1].lower(), fields[2]
        if codec not in _FRAME_SIZE:
            raise LadderError(f"rendition {name!r}: codec must be aac or opus, not {codec!r}")
        if not name.replace("-", "").isalnum():
            raise LadderError(f"rendition name {name!r} must be letters, digits and dashes")
        if not is_rendition_name(name):
            raise LadderError(f"rendition name {name!r} is up to 32 letters, digits and dashes, "
                              "and not shaped like a broadcast or epoch id")
        try:
            channels = int(fields[3]) if len(fields) == 4 else 2
            rate = int(kbps)
        except ValueError as exc:
            raise LadderError(f"rendition {item!r}: kbps and channels are integers") from exc
        if channels not in (1, 2) or not 8 <= rate <= 512:
            raise LadderError(f"rendition {item!r}: 1 or 2 channels, 8..512 kb/s")
        out.append(Rendition(name, codec, rate, channels))
    if not out:
        raise LadderError("the ladder is empty")
    if len({r.name for r in out}) != len(out):
        raise LadderError("rendition names must be unique")
    if not any(r.codec == "aac" for r in out):
        raise LadderError("the ladder needs an AAC rendition: Apple players do not play Opus")
    return out
