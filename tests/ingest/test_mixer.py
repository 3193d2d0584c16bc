"""Jitter buffers, the mixer and the program clock, on synthetic audio and a fake clock (and
once on uvloop's real one)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import uvloop

from ingest.jitter import MAX_ARRIVALS, JitterBuffer
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
    pc = ProgramClock(lambda n, at: np.zeros((2, n), np.float32), fed.append, clock=clock)
    pc.begin()
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
        pc = ProgramClock(lambda n, at: np.zeros((2, n), np.float32), lambda b: None)
        pc.start()
        await asyncio.sleep(1.0)
        await pc.stop()
        return pc

    pc = uvloop.run(run())
    blocks = pc.stats.samples // BLOCK
    assert blocks >= 20
    assert pc.stats.wakeups <= blocks * 1.2 + 2


def test_a_clock_told_what_its_sink_wants_wakes_once_a_part_and_counts_only_a_stall_late() -> None:
    """Blocks the sink does not want yet are rendered late on purpose, a part at a time;
    only a loop held up past the block it wanted makes blocks late."""
    part = 10 * BLOCK
    fed: list[np.ndarray] = []

    async def run() -> tuple[ProgramClock, int, int, int]:
        pc = ProgramClock(lambda n, at: np.zeros((2, n), np.float32), fed.append,
                          wanted=lambda: part - pc.stats.samples % part)
        pc.start()
        await asyncio.sleep(1.0)
        blocks, wakeups, late = pc.stats.samples // BLOCK, pc.stats.wakeups, pc.stats.late_blocks
        time.sleep(0.5)  # noqa: ASYNC251 - the loop held up past the next part's last block
        await asyncio.sleep(0.1)
        await pc.stop()
        return pc, blocks, wakeups, late

    pc, blocks, wakeups, late = uvloop.run(run())
    assert blocks >= 40
    assert wakeups <= blocks / 10 + 3
    # Nine blocks in ten were rendered after their successor fell due, on purpose; none of
    # them count (a loaded machine may still hold the loop up now and then).
    assert late <= blocks // 10
    assert pc.stats.late_blocks - late >= 5  # the half-second stall does
    assert sum(b.shape[1] for b in fed) == pc.stats.samples


def test_clock_feeds_silence_when_rendering_fails() -> None:
    clock = FakeClock()
    fed: list[np.ndarray] = []

    def broken(n: int, at: float) -> np.ndarray:
        raise RuntimeError("boom")

    pc = ProgramClock(broken, fed.append, clock=clock)
    pc.begin()
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


def _arrivals(period: float, start: float, end: float, seed: int,
              boundary_free: float = 0.003) -> list[float]:
    """Arrival times every `period` s with up to 8 ms of jitter, kept clear of the last
    `boundary_free` s before a block falls due (where a clock ticking on time and one
    admitting by due time could disagree about which came first)."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    t = start
    while t < end:
        at = t + float(rng.uniform(0, 0.008))
        gap = (-at) % (BLOCK / RATE)  # time until the next block boundary
        if gap < boundary_free:
            at += gap + 0.0005
        times.append(max(at, times[-1] if times else at))
        t += period
    return times


def test_a_batched_clock_renders_exactly_what_an_on_time_clock_renders() -> None:
    """Blocks rendered a part at a time, when the encoder wants them, hold what they held
    rendered one by one as each fell due: each speaker's audio admitted by the moment it
    arrived, and a speaker joining, muted, unmuted and leaving in between."""
    seconds = 3.0
    a_times = _arrivals(1024 / RATE, 0.0, seconds, 1)
    b_times = _arrivals(0.02, 0.7, 2.3, 2)

    def run(batched: bool) -> np.ndarray:
        clock = FakeClock()
        t0 = clock.now
        mixer = Mixer()
        fed: list[np.ndarray] = []
        pc = ProgramClock(mixer.render, fed.append, clock=clock)
        if batched:
            mixer.on_change = pc.sync
        pc.begin()
        speakers: dict[str, object] = {}
        events: list[tuple[float, str, str, int]] = [
            *((t, "audio", "a", i) for i, t in enumerate(a_times)),
            *((t, "audio", "b", i) for i, t in enumerate(b_times)),
            (0.0001, "join", "a", 0), (0.6913, "join", "b", 0), (1.3071, "mute", "a", 1),
            (1.9127, "mute", "a", 0), (2.4113, "leave", "b", 0)]
        events.sort(key=lambda e: (e[0], e[1] != "join"))
        step, now, i = 0.0005, 0.0, 0
        while now < seconds + 0.1:
            if not batched or int(now / step) % 427 == 0:  # a part is 0.2133 s
                pc.tick()
            while i < len(events) and events[i][0] <= now:
                _, what, who, n = events[i]
                i += 1
                if what == "join":
                    speakers[who] = mixer.add(who, JitterBuffer(target_ms=60))
                elif what == "leave":
                    mixer.remove(who)
                    del speakers[who]
                elif what == "mute":
                    inp = mixer.inputs[who]
                    if batched:
                        inp.mute(bool(n))
                    else:
                        inp.muted = bool(n)
                elif who in speakers:
                    pcm = tone(300 if who == "a" else 700, 1024 if who == "a" else 960,
                               0.3, start=n * 1024)
                    if batched:
                        mixer.inputs[who].buffer.arrive(pcm, clock.now)
                    else:
                        mixer.inputs[who].buffer.push(pcm)
            now += step
            clock.now = t0 + now
        pc.tick()
        return np.concatenate(fed, axis=1)

    on_time, batched = run(False), run(True)
    assert on_time.shape == batched.shape and on_time.shape[1] >= seconds * RATE
    assert np.array_equal(on_time, batched)
    # The scenario is not trivially silent: both speakers and the mute are in it.
    assert np.abs(on_time[:, int(1.0 * RATE):int(1.2 * RATE)]).max() > 0.3
    assert np.abs(on_time[:, int(1.5 * RATE):int(1.7 * RATE)]).max() < np.abs(
        on_time[:, int(1.0 * RATE):int(1.2 * RATE)]).max()


def test_a_decoded_arrival_is_decoded_when_admitted_and_one_that_fails_is_skipped() -> None:
    buf = JitterBuffer(target_ms=20)
    calls: list[int] = []

    def frame(n: int, ok: bool = True):  # type: ignore[no-untyped-def]
        def decode() -> np.ndarray | None:
            calls.append(n)
            return tone(440, 1024) if ok else None
        return decode

    buf.arrive(frame(0), 1.0)
    buf.arrive(frame(1, ok=False), 1.01)
    buf.arrive(frame(2), 1.02)
    assert buf.waiting == 3 and not calls
    buf.admit(1.015)
    assert calls == [0, 1] and buf.level == 1024 and buf.waiting == 1
    buf.admit(2.0)
    assert calls == [0, 1, 2] and buf.level == 2048


def test_arrivals_waiting_for_a_stalled_clock_are_bounded_and_counted() -> None:
    buf = JitterBuffer(target_ms=20)
    for i in range(MAX_ARRIVALS + 6):
        buf.arrive(tone(440, 256), 1.0 + i * 0.005)
    assert buf.waiting == MAX_ARRIVALS
    assert buf.stats.admitted_early == 6 and buf.level == 6 * 256  # the oldest, in order
    buf.admit(100.0)
    assert buf.waiting == 0 and buf.level == (MAX_ARRIVALS + 6) * 256
