"""Publisher AAC to program audio: 48 kHz stereo passes through as decoded, anything else is
resampled to it, and a mono voice comes out on both sides at full level."""

from __future__ import annotations

from typing import cast

import av
import numpy as np

from ingest.decoder import AacDecoder
from ingest.rtmp.flv import AudioSpecificConfig


def _aac(rate: int, layout: str, seconds: float) -> tuple[bytes, list[bytes]]:
    """An AudioSpecificConfig and raw AAC frames (as FLV carries them) of a 440 Hz tone."""
    ctx = cast(av.AudioCodecContext, av.CodecContext.create("aac", "w"))
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = rate, layout, "fltp", 96_000
    ctx.open()
    channels = 2 if layout == "stereo" else 1
    t = np.arange(int(rate * seconds)) / rate
    pcm = np.tile(0.4 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)
    packets: list[bytes] = []
    for i in range(0, pcm.shape[1] - 1023, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + 1024]),
                                           format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return bytes(ctx.extradata or b""), packets


def test_48k_stereo_is_the_decoder_output_itself() -> None:
    asc, packets = _aac(48_000, "stereo", 1.0)
    ours = AacDecoder(AudioSpecificConfig.parse(asc))
    reference = av.CodecContext.create("aac", "r")
    reference.extradata = asc
    reference.open()
    for packet in packets:
        expected = [f.to_ndarray() for f in reference.decode(av.Packet(packet))]
        got = ours.decode(packet)
        assert got.dtype == np.float32 and got.shape[0] == 2
        want = np.concatenate(expected, axis=1) if expected else np.zeros((2, 0), np.float32)
        np.testing.assert_array_equal(got, np.clip(want, -4.0, 4.0))


def test_44k1_mono_is_resampled_to_48k_on_both_sides_at_full_level() -> None:
    asc, packets = _aac(44_100, "mono", 2.0)
    ours = AacDecoder(AudioSpecificConfig.parse(asc))
    pcm = np.concatenate([ours.decode(p) for p in packets], axis=1)
    assert pcm.shape[0] == 2
    np.testing.assert_array_equal(pcm[0], pcm[1])
    # Two seconds at 44.1 kHz, less what swr still holds: about two seconds at 48 kHz.
    assert abs(pcm.shape[1] - 2 * 48_000) < 3 * 1024
    steady = pcm[0, 24_000:72_000]
    assert 0.3 < float(np.max(np.abs(steady))) < 0.5  # the tone's 0.4, not −3 dB of it
