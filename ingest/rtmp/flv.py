"""FLV audio tag bodies (RTMP audio messages) and the AAC AudioSpecificConfig.

An audio message starts with one byte: sound format (4 bits), rate, size, channels. For
AAC (format 10) a second byte says whether the rest is the AudioSpecificConfig (sequence
header, sent once before any frame) or a raw AAC frame. Enhanced RTMP's ExAudioTagHeader
(format 9: Opus, FLAC, AC-3 …) and the legacy codecs are recognised only to be refused with
their name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.errors import ProtocolError, UnsupportedCodec

AAC = 10
AAC_SEQUENCE_HEADER, AAC_RAW = 0, 1
SOUND_FORMATS = {
    0: "linear PCM (platform endian)", 1: "ADPCM", 2: "MP3", 3: "linear PCM (little endian)",
    4: "Nellymoser 16 kHz", 5: "Nellymoser 8 kHz", 6: "Nellymoser", 7: "G.711 A-law",
    8: "G.711 mu-law", 9: "enhanced RTMP (ExAudioTagHeader)", 10: "AAC", 11: "Speex",
    14: "MP3 8 kHz", 15: "device-specific",
}
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                11025, 8000, 7350)


@dataclass(frozen=True, slots=True)
class AudioTag:
    sound_format: int
    rate_index: int
    sample_size_16bit: bool
    stereo: bool
    aac_packet_type: int | None
    data: bytes

    @classmethod
    def parse(cls, body: bytes) -> AudioTag:
        if not body:
            raise ProtocolError("empty audio message")
        b0 = body[0]
        fmt = b0 >> 4
        if fmt != AAC:
            name = SOUND_FORMATS.get(fmt, f"sound format {fmt}")
            raise UnsupportedCodec(f"{name} audio is not accepted; publish AAC")
        if len(body) < 2:
            raise ProtocolError("AAC audio message without its packet type")
        if body[1] not in (AAC_SEQUENCE_HEADER, AAC_RAW):
            raise ProtocolError(f"AAC packet type {body[1]} is neither 0 nor 1")
        return cls(fmt, (b0 >> 2) & 3, bool(b0 & 2), bool(b0 & 1), body[1], bytes(body[2:]))

    @property
    def is_sequence_header(self) -> bool:
        return self.aac_packet_type == AAC_SEQUENCE_HEADER

    def __bytes__(self) -> bytes:
        b0 = (self.sound_format << 4) | (self.rate_index << 2)
        b0 |= (2 if self.sample_size_16bit else 0) | (1 if self.stereo else 0)
        head = bytes([b0]) if self.aac_packet_type is None else bytes([b0, self.aac_packet_type])
        return head + self.data


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    """ISO 14496-3 §1.6.2.1, the fields a decoder needs to be set up (and we check)."""

    object_type: int  # 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AACv2)
    sample_rate: int
    channel_config: int
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> AudioSpecificConfig:
        if len(raw) < 2:
            raise ProtocolError("AudioSpecificConfig shorter than 2 bytes")
        bits = _Bits(raw)
        obj = bits.read(5)
        if obj == 31:
            obj = 32 + bits.read(6)
        idx = bits.read(4)
        rate = bits.read(24) if idx == 15 else (SAMPLE_RATES[idx] if idx < 13 else 0)
        if not 7350 <= rate <= 96000:
            raise ProtocolError(f"AAC sampling frequency index {idx} is invalid")
        channels = bits.read(4)
        if obj == 0:
            raise ProtocolError("AAC audio object type 0 is invalid")
        if obj not in (1, 2, 3, 4, 5, 29):
            raise UnsupportedCodec(f"AAC object type {obj} is not supported; use AAC-LC or HE-AAC")
        if not 1 <= channels <= 7:
            raise UnsupportedCodec(f"AAC channel configuration {channels} is not supported")
        return cls(obj, rate, channels, bytes(raw))


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.data) * 8:
            raise ProtocolError("AudioSpecificConfig truncated")
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v
