"""Jitter buffers, the mixer and the program clock, on synthetic audio and a fake clock (and
once on uvloop's real one)."""

from __future__ import annotations

import asyncio

import numpy as np
import uvloop

from ingest.jitter import JitterBuffer
from ingest.mixer import BLOCK, WAKE_MARGIN, Mixer, ProgramClock

RATE = 48_000


def tone(freq: float, n: int, amp: float = 0.5, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.vstack([x, x])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- jitter buffer --------------------------------------------------------------------

def test_buffer_fills_to_target_before_playing() -> None:
    buf = JitterBuffer(target_ms=100)
    buf.push(tone(440, 4000))
    assert buf.pull(BLOCK) is None  # 83 ms < 100 ms
    buf.push(tone(440, 1000))
    out = buf.pull(BLOCK)
    assert out is not None and out.shape == (2, BLOCK)


def test_underrun_pads_with_silence_then_refills() -> None:
    buf = JitterBuffer(target_ms=40)
    buf.push(tone(440, 2400))
    blocks = [buf.pull(BLOCK) for _ in range(4)]
    assert blocks[0] is not None and blocks[1] is not None
    assert blocks[2] is not None and not blocks[2][:, 480:].any()  # half real, half silence
    assert blocks[3] is None
    assert buf.stats.underruns == 1 and not buf.playing


def test_fast_publisher_clock_does_not_grow_latency() -> None:
    """A publisher 1 % fast for 60 s would add 600 ms; the buffer must stay near target."""
    buf = JitterBuffer(target_ms=120)
    produced = 0.0
    levels: list[int] = []
    for _ in range(3000):  # 60 s of 20 ms blocks
        produced += BLOCK * 1.01
        while produced >= 1024:  # AAC-sized pushes
            buf.push(tone(440, 1024))
            produced -= 1024
        assert buf.pull(BLOCK) is not None or len(levels) < 10
        levels.append(buf.level)
    assert max(levels[-500:]) < buf.target + buf.band + 2 * 1024
    assert buf.stats.underruns == 0 and buf.stats.dropped_samples == 0


def test_slow_publisher_clock_does_not_run_dry() -> None:
    buf = JitterBuffer(target_ms=120)
    produced = 0.0
    for _ in range(3000):
        produced += BLOCK * 0.995
        while produced >= 960:
            buf.push(tone(440, 960))
            produced -= 960
        buf.pull(BLOCK)
    assert buf.stats.underruns == 0


def test_burst_after_a_stall_is_trimmed_to_target() -> None:
    buf = JitterBuffer(target_ms=100, max_ms=1000)
    buf.push(tone(440, 3 * RATE))  # three seconds at once
    assert buf.level == buf.target
    assert buf.stats.dropped_samples == 3 * RATE - buf.target


def test_bad_shapes_are_ignored() -> None:
    buf = JitterBuffer()
    buf.push(np.zeros((1, 100), np.float32))
    buf.push(np.zeros((2, 0), np.float32))
    assert buf.level == 0


# --- mixer ----------------------------------------------------------------------------

def _filled(pcm: np.ndarray) -> JitterBuffer:
    buf = JitterBuffer(target_ms=20, max_ms=10_000)
    buf.push(pcm)
    return buf


def test_mix_sums_speakers_with_headroom_and_skips_muted_ones() -> None:
    mixer = Mixer(headroom_db=-6.0)
    mixer.add("a", _filled(tone(500, RATE, 0.2)))
    b = mixer.add("b", _filled(tone(3000, RATE, 0.2)))
    b.muted = True
    out = np.concatenate([mixer.render() for _ in range(20)], axis=1)[:, BLOCK:]
    spec = np.abs(np.fft.rfft(out[0]))
    freqs = np.fft.rfftfreq(out.shape[1], 1 / RATE)
    assert abs(freqs[np.argmax(spec)] - 500) < 50
    assert spec[np.abs(freqs - 3000) < 50].max() < spec.max() * 1e-3
    assert abs(np.abs(out).max() - 0.2 * 10 ** (-6 / 20)) < 0.01
    assert b.level_dbfs > -20  # a muted speaker still shows on the meter


def test_ten_loud_speakers_never_pass_the_ceiling() -> None:
    mixer = Mixer()
    for i in range(12):
        mixer.add(f"s{i}", _filled(tone(200 + 97 * i, 2 * RATE, 0.9)))
    out = np.concatenate([mixer.render() for _ in range(90)], axis=1)
    assert np.abs(out).max() <= mixer.ceiling + 1e-6
    assert mixer.stats.limited_blocks > 0
    # Gain changes are ramps: no sample-to-sample jump bigger than the signal allows.
    assert np.abs(np.diff(out[0])).max() < 0.5


def test_limiter_releases_after_a_loud_passage() -> None:
    mixer = Mixer(release_ms=100)
    loud = np.concatenate([tone(300, RATE // 2, 1.0), tone(300, RATE, 0.1, RATE // 2)], axis=1)
    mixer.add("a", _filled(loud))
    out = np.concatenate([mixer.render() for _ in range(70)], axis=1)
    tail = out[:, -RATE // 4 :]
    assert abs(np.abs(tail).max() - 0.1 * mixer.headroom) < 0.01  # back to unity gain


def test_nobody_speaking_renders_silence() -> None:
    assert not Mixer().render().any()


# --- program clock --------------------------------------------------------------------

def test_clock_renders_exactly_what_wall_time_says_and_catches_up() -> None:
    clock = FakeClock()
    fed: list[np.ndarray] = []
    pc = ProgramClock(lambda n: np.zeros((2, n), np.float32), fed.append, clock=clock)
    pc.stats.started_monotonic = clock.now
    clock.now += 0.020 - WAKE_MARGIN - 0.001
    assert pc.tick() == 0
    clock.now += 0.0015  # within the margin a timer may fire early by: due
    assert pc.tick() == 1
    clock.now += 1.0  # the loop was stalled for a second: 50 blocks due at once
    assert pc.tick() == 50
    assert pc.stats.late_blocks == 49
    # Ten minutes of 20 ms ticks with jittery wake-ups: never a sample of drift.
    for i in range(30_000):
        clock.now += 0.023 if i % 7 == 0 else 0.0195
        pc.tick()
    expected = int((clock.now + WAKE_MARGIN - pc.stats.started_monotonic) * RATE) // BLOCK * BLOCK
    assert pc.stats.samples == expected == sum(b.shape[1] for b in fed)


def test_clock_wakes_once_a_block_under_uvloop() -> None:
    """uvloop's millisecond timers end a sleep until a block is due a little early; the
    clock must not then spin through several wake-ups for one block."""
    async def run() -> ProgramClock:
        pc = ProgramClock(lambda n: np.zeros((2, n), np.float32), lambda b: None)
        pc.start()
        await asyncio.sleep(1.0)
        await pc.stop()
        return pc

    pc = uvloop.run(run())
    blocks = pc.stats.samples // BLOCK
    assert blocks >= 20
    assert pc.stats.wakeups <= blocks * 1.2 + 2


def test_clock_feeds_silence_when_rendering_fails() -> None:
    clock = FakeClock()
    fed: list[np.ndarray] = []

    def broken(n: int) -> np.ndarray:
        raise RuntimeError("boom")

    pc = ProgramClock(broken, fed.append, clock=clock)
    pc.stats.started_monotonic = clock.now
    clock.now += 0.1
    assert pc.tick() == 5
    assert len(fed) == 5 and not any(b.any() for b in fed)


def test_a_stall_costs_a_gap_not_lasting_latency() -> None:
    buf = JitterBuffer(target_ms=100)
    buf.push(tone(440, 4800))
    for _ in range(5):
        assert buf.pull(BLOCK) is not None
    # The loop stalls: half a second of program is rendered before any input is read.
    for _ in range(25):
        buf.pull(BLOCK)
    assert buf.stats.underruns == 1
    buf.push(tone(440, 24_000 + 4800))  # everything that piled up arrives at once
    assert buf.level <= buf.target + 960  # back at the target at once, not 600 ms behind
    assert buf.stats.dropped_samples > 20_000


def test_hold_audio_loops_while_nobody_is_connected_and_fades_for_a_speaker() -> None:
    hold = tone(300, 4800, 0.5)
    mixer = Mixer(hold=hold)
    quiet = np.concatenate([mixer.render() for _ in range(30)], axis=1)
    assert np.abs(quiet[:, -BLOCK:]).max() > 0.3  # faded in, looping
    mixer.add("host", _filled(tone(2000, RATE, 0.3)))
    with_host = np.concatenate([mixer.render() for _ in range(30)], axis=1)[:, -10 * BLOCK:]
    spec = np.abs(np.fft.rfft(with_host[0]))
    freqs = np.fft.rfftfreq(with_host.shape[1], 1 / RATE)
    assert spec[np.abs(freqs - 300) < 20].max() < spec.max() * 1e-3  # faded out
