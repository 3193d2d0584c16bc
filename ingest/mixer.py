"""Speakers mixed into one program, and the program clock that feeds it to the broadcast.

`Mixer.render(n)` is pure arithmetic: pull n samples from every speaker's jitter buffer,
sum the unmuted ones (or the hold audio, when configured and nobody is connected), apply
fixed headroom, then a look-ahead peak limiter. The limiter
delays the program by one block (20 ms) so that its gain is already down when a peak
arrives: the gain ramps linearly across a block between two values that are each low
enough for the block, so no sample passes the ceiling and no gain step clicks.

`ProgramClock` owns the timeline: it renders a 960-sample block (20 ms) whenever the wall
clock says one is due, counting samples from the broadcast's start, so a late wake-up is
made up with more blocks and the timeline never drifts from wall time (PROGRAM-DATE-TIME
is start + samples). Nobody speaking renders silence, so the live playlist never stalls.

What the program holds at sample n was heard one jitter buffer earlier than the clock
renders it (the look-ahead block is rendered one block late and so cancels out): at its
first block the clock tells its `anchor` the wall time its sample 0 was captured, the
broadcast's start less `Mixer.capture_delay()`, so that PROGRAM-DATE-TIME names the moment a
speaker was heard, not the moment the mix went out.

Blocks are due every 20 ms, but the encoder does nothing with them until they complete a
part (about 0.21 s), so the clock sleeps until the block its sink says it needs next
(`wanted`) and renders every block due by then in one wake-up: a tenth of the wake-ups,
each of which costs more than the work in it (cold caches, `docs/performance.md`). What a
block holds does not change. Speakers' audio `arrive`s in their jitter buffers stamped with
its time and each block admits only what came in by its own due time; anything else that
changes the mix (a speaker joining, leaving or muted) first has the clock render every
block already due (`Mixer.on_change`, `ProgramClock.sync`), so those blocks are made as
they would have been on time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingest.jitter import JitterBuffer
from packager.ladder import SAMPLE_RATE

BLOCK = 960  # 20 ms at 48 kHz
# An input at least this loud is someone speaking: room tone, hiss and a muted microphone's
# noise floor stay below it.
VOICE_DBFS = -50.0
# Voiced within this many blocks (0.5 s) still counts as speaking: pauses between words.
VOICE_HOLD_BLOCKS = 25
log = logging.getLogger("townsquare.ingest.mixer")


def _nothing() -> None:
    pass


@dataclass(slots=True)
class MixerInput:
    buffer: JitterBuffer
    muted: bool = False
    gain: float = 1.0
    level_dbfs: float = -120.0  # smoothed RMS of what this speaker sent, muted or not
    voiced_block: int = -VOICE_HOLD_BLOCKS - 1  # the last block its level reached VOICE_DBFS
    # Renders the blocks already due before this input changes (the mixer's `on_change`).
    sync: Callable[[], None] = _nothing

    def mute(self, muted: bool) -> None:
        """Mute or unmute from now on: blocks already due are rendered as they were."""
        self.sync()
        self.muted = muted


@dataclass(slots=True)
class MixerStats:
    limited_blocks: int = 0  # read and reset once a second into the metrics


class Mixer:
    def __init__(
        self,
        headroom_db: float = -3.0,
        ceiling_dbfs: float = -1.0,
        release_ms: float = 250.0,
        hold: np.ndarray | None = None,
    ) -> None:
        self.headroom = 10 ** (headroom_db / 20)
        self.ceiling = 10 ** (ceiling_dbfs / 20)
        # Gain may rise by this much per block: from full reduction back to 1 in release_ms.
        self._release_step = BLOCK / (SAMPLE_RATE * release_ms / 1000)
        self.inputs: dict[str, MixerInput] = {}
        self.stats = MixerStats()
        self.blocks = 0  # blocks rendered
        self._pending = np.zeros((2, BLOCK), np.float32)  # the look-ahead block
        self._pending_peak = 0.0  # its largest magnitude
        self._gain = 1.0
        # Hold audio loops while nobody is connected, fading in and out over 200 ms.
        self._hold = hold if hold is not None and hold.ndim == 2 and hold.shape[1] else None
        self._hold_pos = 0
        self._hold_gain = 0.0
        # Called before the inputs change; the program clock sets it to render what is due.
        self.on_change: Callable[[], None] = _nothing

    def capture_delay(self) -> float:
        """Seconds between a speaker being heard and the mix taking that audio: the jitter
        buffers are steered to their targets, so the largest target of those connected (0
        with nobody: hold audio and silence are not late)."""
        return max((inp.buffer.target for inp in self.inputs.values()), default=0) / SAMPLE_RATE

    def add(self, speaker_id: str, buffer: JitterBuffer) -> MixerInput:
        self.on_change()
        inp = MixerInput(buffer, sync=self._sync)
        self.inputs[speaker_id] = inp
        return inp

    def remove(self, speaker_id: str) -> None:
        self.on_change()
        self.inputs.pop(speaker_id, None)

    def _sync(self) -> None:
        self.on_change()

    def render(self, n: int = BLOCK, until: float = math.inf) -> np.ndarray:
        """The next n program samples: float32 (2, n) in [-ceiling, ceiling], from what
        each speaker's audio had arrived by `until` (the block's due time).

        Written for 50 calls a second a room: ndarray methods and ufuncs rather than numpy's
        Python-level wrappers (`np.mean`, `np.clip`), and no array made that is not used."""
        mix: np.ndarray | None = None
        for inp in self.inputs.values():
            buffer = inp.buffer
            if buffer.waiting:
                buffer.admit(until)
            block = buffer.pull(n)
            if block is None:
                inp.level_dbfs = max(-120.0, inp.level_dbfs - 3.0)
                continue
            flat = block.reshape(-1)
            rms = math.sqrt(float(np.dot(flat, flat)) / flat.size) if flat.size else 0.0
            db = 20 * math.log10(rms) if rms > 1e-6 else -120.0
            inp.level_dbfs = db if db > inp.level_dbfs else 0.8 * inp.level_dbfs + 0.2 * db
            if inp.level_dbfs >= VOICE_DBFS:
                inp.voiced_block = self.blocks
            if not inp.muted:
                # A new array either way: `block` may be a view of what the speaker sent.
                scaled = block * np.float32(inp.gain * self.headroom)
                if mix is None:
                    mix = scaled
                else:
                    mix += scaled
        if mix is None:
            mix = np.zeros((2, n), np.float32)
        if self._hold is not None:
            self._add_hold(mix)
        self.blocks += 1
        return self._limit(mix)

    def speaking(self, inp: MixerInput) -> bool:
        """Whether the input is heard speaking now: voiced within the last half second, and
        not muted."""
        return not inp.muted and self.blocks - inp.voiced_block <= VOICE_HOLD_BLOCKS

    def _add_hold(self, mix: np.ndarray) -> None:
        target = 0.0 if self.inputs else 1.0
        start = self._hold_gain
        end = min(1.0, start + 0.1) if target > start else max(0.0, start - 0.1)
        self._hold_gain = end
        if start == 0.0 and end == 0.0:
            return
        assert self._hold is not None
        n = mix.shape[1]
        idx = (np.arange(n) + self._hold_pos) % self._hold.shape[1]
        self._hold_pos = int((self._hold_pos + n) % self._hold.shape[1])
        ramp = np.linspace(start, end, n, dtype=np.float32) * self.headroom
        mix += self._hold[:, idx] * ramp

    def _limit(self, current: np.ndarray) -> np.ndarray:
        out, out_peak = self._pending, self._pending_peak
        if out.shape[1] != current.shape[1]:
            # Block size changed: flush the look-ahead block by itself (never in practice).
            out, out_peak = np.zeros_like(current), 0.0
        current_peak = _peak(current)
        peak = max(out_peak, current_peak, 1e-9)
        needed = min(1.0, self.ceiling / peak)
        start = self._gain
        end = needed if needed < start else min(needed, start + self._release_step)
        if start != 1.0 or end != 1.0:
            ramp = np.linspace(start, end, out.shape[1], dtype=np.float32)
            out = out * ramp
            self.stats.limited_blocks += 1
        self._gain = end
        self._pending, self._pending_peak = current, current_peak
        # `out` is the mixer's own array (made by `render` or just above): clipped in place.
        np.minimum(out, 1.0, out=out)
        np.maximum(out, -1.0, out=out)
        return out


# uvloop keeps timers in whole milliseconds on a clock read once per loop turn, so a sleep
# until a block is due may end up to a millisecond or so early; the clock then counts the
# block as due rather than sleeping again for the rest (it did so four times a block, every
# block). A block goes out at most this much before its time; the timeline, counted in
# samples, is unchanged.
WAKE_MARGIN = 0.002


def _peak(block: np.ndarray) -> float:
    """The largest magnitude in `block` (0 when empty), without an array of magnitudes."""
    if not block.size:
        return 0.0
    return max(float(block.max()), -float(block.min()))


# The longest the clock sleeps, in blocks, whatever its sink wants: per-block work
# (`on_block`: metrics, the idle check) runs at least this often, and arrivals wait at most
# this long in a jitter buffer (`ingest.jitter.MAX_ARRIVALS`).
MAX_SLEEP_BLOCKS = 25
BLOCK_SECONDS = BLOCK / SAMPLE_RATE


@dataclass(slots=True)
class ClockStats:
    samples: int = 0
    # Blocks rendered after the next block was due too, among those the sink needed on time
    # (a stalled loop; blocks the sink did not want yet are rendered late on purpose).
    late_blocks: int = 0
    wakeups: int = 0  # times the clock's own timer fired
    hook_errors: int = 0  # times `on_block` raised
    started_monotonic: float = field(default=0.0)
    late_taken: int = 0  # late blocks already handed out by `take_late`

    def take_late(self) -> int:
        """Late blocks since the last call: each one handed out once, to a counter."""
        new, self.late_taken = self.late_blocks - self.late_taken, self.late_blocks
        return new


class ProgramClock:
    """Feeds `render(BLOCK, due_time)` into `sink` at real time on its own sample count.

    `wanted`, when given, says how many more samples the sink needs before it does anything
    with them (0: it does not know); the clock then sleeps until the block that completes
    them. `sync()` renders every block already due, at once: call it before anything the
    blocks depend on changes.

    A sink that raises refuses audio: the clock stops there and tells `on_stopped` why (the
    owner of the program decides what comes next). `on_block` is bookkeeping after each block
    and cannot stop the program: its failures are logged (the first) and counted."""

    def __init__(
        self,
        render: Callable[[int, float], np.ndarray],
        sink: Callable[[np.ndarray], None],
        on_block: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        anchor: Callable[[float], object] | None = None,
        capture_delay: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        wanted: Callable[[], int] | None = None,
        on_stopped: Callable[[Exception], None] | None = None,
    ) -> None:
        self._render = render
        self._sink = sink
        self._on_block = on_block
        self._on_stopped = on_stopped
        self._clock = clock
        # Told once, before the first block, when sample 0 was captured (wall clock).
        self._anchor = anchor
        self._capture_delay = capture_delay
        self._wall = wall
        self._wall_start = 0.0
        self._wanted = wanted
        # Due time of the first block the sink needed when the clock went to sleep: blocks
        # from there on count as late when rendered after their successor was due.
        self._needed_at = -math.inf
        self._running = False
        self.stats = ClockStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None

    def begin(self) -> None:
        """Start the timeline now, without the clock's own timer: the caller ticks."""
        self.stats.started_monotonic = self._clock()
        self._wall_start = self._wall()
        self._running = True

    def start(self) -> None:
        self.begin()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_soon(self._wake)

    async def stop(self) -> None:
        """Stop, rendering first every block due by now (they may hold a part's audio)."""
        self.sync()
        self._halt()

    def replan(self) -> None:
        """The sink wants a different number of samples now: sleep until then instead."""
        if self._timer is not None:
            self._plan()

    def _halt(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sync(self) -> None:
        """Render every block due by now, while the clock runs. A sink that refuses audio
        stops the clock, as it does when its own task renders."""
        if not self._running:
            return
        try:
            self.tick()
        except Exception as exc:  # noqa: BLE001 - the broadcast refused audio: stop
            log.warning("program clock stopped: the broadcast refused audio: %s", exc)
            self._halt()
            if self._on_stopped is not None:
                self._on_stopped(exc)

    def due_blocks(self) -> int:
        """Blocks the wall clock says should have been rendered and have not been."""
        elapsed = self._clock() + WAKE_MARGIN - self.stats.started_monotonic
        return max(0, int(elapsed * SAMPLE_RATE) - self.stats.samples) // BLOCK

    def tick(self) -> int:
        """Render every due block; returns how many."""
        n = self.due_blocks()
        if not n:
            return 0
        if self._anchor is not None:
            # At the first block speakers have joined; their buffers say how late they are.
            anchor, self._anchor = self._anchor, None
            delay = self._capture_delay() if self._capture_delay is not None else 0.0
            anchor(self._wall_start - delay)
        stats = self.stats
        # A block is late when it is rendered after the next one fell due as well.
        late_before = self._clock() + WAKE_MARGIN - BLOCK_SECONDS
        for _ in range(n):
            due_at = stats.started_monotonic + (stats.samples + BLOCK) / SAMPLE_RATE
            if self._needed_at <= due_at <= late_before:
                stats.late_blocks += 1
            try:
                block = self._render(BLOCK, due_at)
            except Exception:
                log.exception("program clock: rendering a block failed; feeding silence")
                block = np.zeros((2, BLOCK), np.float32)
            self._sink(block)
            stats.samples += BLOCK
            if self._on_block is not None:
                try:
                    self._on_block()
                except Exception:
                    stats.hook_errors += 1
                    if stats.hook_errors == 1:
                        log.exception("program clock: the bookkeeping after a block failed "
                                      "(logged once per clock; the program goes on)")
        return n

    def _wake(self) -> None:
        """The clock's timer: render what is due, then sleep until the sink wants more."""
        self._timer = None
        self.stats.wakeups += 1
        self.sync()
        if self._running:
            self._plan()

    def _plan(self) -> None:
        ahead = 1
        if self._wanted is not None:
            ahead = min(MAX_SLEEP_BLOCKS, max(1, -(-self._wanted() // BLOCK)))
        next_at = self.stats.started_monotonic + (
            self.stats.samples + ahead * BLOCK) / SAMPLE_RATE
        self._needed_at = next_at
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(max(0.0, next_at - self._clock()), self._wake)
