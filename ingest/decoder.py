"""Publisher audio to program audio: decode (AAC from RTMP) and resample to 48 kHz stereo.

Program audio is what `Broadcast.feed()` takes: float32, planar, shape (2, n), 48 kHz.
PyAV errors are translated to DecodeError here, once.
"""

from __future__ import annotations

import av
import numpy as np
from av.audio.frame import AudioFrame

from ingest.errors import DecodeError
from ingest.rtmp.flv import AudioSpecificConfig
from packager.ladder import SAMPLE_RATE


class ProgramResampler:
    """Any PyAV audio frame → float32 (2, n) at 48 kHz.

    Mono is copied to both sides at full level (dual mono), not panned at −3 dB as swr's
    mono→stereo would: a host's voice on one mic should sound as loud as on two.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._mono = False

    def convert(self, frame: AudioFrame) -> np.ndarray:
        if (self._resampler is None and frame.format.name == "fltp"
                and frame.sample_rate == SAMPLE_RATE and frame.layout.nb_channels == 2):
            # Already program audio (what AAC at 48 kHz stereo decodes to): no filter graph
            # a frame. A stream that ever needed resampling stays on its resampler, which
            # may hold samples back.
            return frame.to_ndarray()
        frame.pts = None  # timing is the mixer's business; swr must not pad or trim by pts
        mono = frame.layout.nb_channels == 1
        if self._resampler is None or mono != self._mono:
            layout = "mono" if mono else "stereo"
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
            self._mono = mono
        try:
            out = self._resampler.resample(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise DecodeError(f"cannot resample audio: {exc}") from exc
        if not out:
            return np.zeros((2, 0), np.float32)
        arrays = [f.to_ndarray() for f in out]
        pcm = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
        if self._mono:
            pcm = np.repeat(pcm[:1], 2, axis=0)
        return np.ascontiguousarray(pcm, dtype=np.float32)


class AacDecoder:
    """Raw AAC frames (as FLV carries them, no ADTS) → program audio."""

    def __init__(self, config: AudioSpecificConfig) -> None:
        self.config = config
        try:
            self._ctx = av.CodecContext.create("aac", "r")
            self._ctx.extradata = config.raw
            self._ctx.open()
        except av.FFmpegError as exc:
            raise DecodeError(f"AAC decoder rejected the AudioSpecificConfig: {exc}") from exc
        self._resampler = ProgramResampler()

    def decode(self, frame: bytes) -> np.ndarray:
        try:
            frames = self._ctx.decode(av.Packet(frame))
        except (av.FFmpegError, ValueError) as exc:
            raise DecodeError(f"AAC frame of {len(frame)} bytes rejected: {exc}") from exc
        parts = [self._resampler.convert(f) for f in frames]
        if not parts:
            return np.zeros((2, 0), np.float32)
        pcm = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        # A hostile stream can decode to NaN/inf or huge values; the mixer must never see them.
        # Cleaned in place (the array is a fresh copy of the frame); the NaN pass only runs
        # on the rare frame that needs it.
        if not pcm.flags.writeable:
            pcm = pcm.copy()
        if not np.isfinite(pcm).all():
            np.nan_to_num(pcm, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(pcm, -4.0, 4.0, out=pcm)
        return pcm
