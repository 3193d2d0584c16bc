"""The marker signal of the mouth-to-ear benchmark, pure: how it sounds, how a heard burst is
told apart from the others, and how heard markers are paired with sent ones.

Once a second a 100 ms tone burst; its frequency says which second of a 30-second cycle it
is (800, 900, … 3700 Hz), so a marker heard late, even after a stall of many seconds, is
never taken for another. 800–3700 Hz passes every codec on the way (Opus from the browser, AAC and Opus
of the ladder) and the browser's speech processing. Sender and ear use the same definition:
the ffmpeg CLI renders it from an expression (`lavfi_expression`), Chromium's fake
microphone plays it from a WAV file (`write_wav`), and `identify` reads it back.
"""

from __future__ import annotations

import itertools
import math
import statistics
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CYCLE = 30  # markers before the frequencies repeat (seconds)
BASE_HZ, STEP_HZ = 800.0, 100.0
BURST = 0.1  # seconds of tone per marker
RAMP = 0.005  # raised edges, so that the codecs do not smear a click ahead of the onset
AMPLITUDE = 0.5


def frequency(index: int) -> float:
    return BASE_HZ + STEP_HZ * (index % CYCLE)


def lavfi_expression() -> str:
    """An `aevalsrc` expression for the same signal (marker k starts at t = k s), escaped
    for a filter graph."""
    phase = "mod(t,1)"
    ramp = f"min(1,min({phase}/{RAMP},({BURST}-{phase})/{RAMP}))"
    tone = f"{AMPLITUDE}*{ramp}*sin(2*PI*({BASE_HZ}+{STEP_HZ}*mod(floor(t),{CYCLE}))*t)"
    return f"if(lt({phase},{BURST}),{tone},0)".replace(",", "\\,")


def render(seconds: int, rate: int = 48_000) -> np.ndarray:
    """The signal as float samples: marker k starts at sample k × rate."""
    t = np.arange(seconds * rate) / rate
    phase = np.mod(t, 1.0)
    ramp = np.clip(np.minimum(phase / RAMP, (BURST - phase) / RAMP), 0.0, 1.0)
    freqs = BASE_HZ + STEP_HZ * np.mod(np.floor(t), CYCLE)
    return np.where(phase < BURST, AMPLITUDE * ramp * np.sin(2 * np.pi * freqs * t), 0.0)


def write_wav(path: Path, rate: int = 48_000) -> None:
    """One whole cycle as 16-bit mono WAV, the form Chromium's fake microphone loops."""
    pcm = (render(CYCLE, rate) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def identify(samples: np.ndarray, rate: float) -> int | None:
    """Which marker (0..CYCLE-1) a burst is, from its strongest frequency; None when it is
    no marker (the peak sits more than a third of a step from every marker frequency)."""
    if len(samples) < 256:
        return None
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (freqs > BASE_HZ - STEP_HZ) & (freqs < frequency(CYCLE - 1) + STEP_HZ)
    if not band.any() or spectrum[band].max() <= 0:
        return None
    peak = float(freqs[band][int(np.argmax(spectrum[band]))])
    index = round((peak - BASE_HZ) / STEP_HZ)
    if not 0 <= index < CYCLE or abs(peak - frequency(index)) > STEP_HZ / 3:
        return None
    return index


@dataclass(frozen=True)
class Marker:
    at: float  # seconds, on the benchmark's wall clock
    index: int  # 0..CYCLE-1


@dataclass(frozen=True)
class Pairing:
    latencies: dict[Marker, float]  # sent marker → mouth-to-ear seconds, for those heard
    unpaired: list[Marker]  # heard onsets that belong to no sent marker


def pair(sent: list[Marker], heard: list[Marker], longest: float = CYCLE * 2 / 3) -> Pairing:
    """Each sent marker with the first heard one of its index that came after it, within
    `longest` seconds (two thirds of a cycle: a lost marker is not paired with the one a
    cycle later unless that came 10 s early)."""
    latencies: dict[Marker, float] = {}
    used: set[int] = set()
    for s in sent:
        for i, h in enumerate(heard):
            if i not in used and h.index == s.index and 0 < h.at - s.at < longest:
                latencies[s] = h.at - s.at
                used.add(i)
                break
    return Pairing(latencies, [h for i, h in enumerate(heard) if i not in used])


def fill_gaps(found: list[Marker], every: float = 1.0, slack: float = 0.05
              ) -> tuple[list[Marker], int]:
    """A regular train of markers with the ones a detector missed put back: between two
    found n periods apart whose indices are n apart. Returns (train, how many were put back)."""
    out: list[Marker] = []
    added = 0
    for a, b in itertools.pairwise(found):
        out.append(a)
        n = round((b.at - a.at) / every)
        if (n >= 2 and abs(b.at - a.at - n * every) <= slack
                and (b.index - a.index) % CYCLE == n % CYCLE):
            out += [Marker(a.at + k * (b.at - a.at) / n, (a.index + k) % CYCLE) for k in range(1, n)]
            added += n - 1
    return out + found[-1:], added


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max, rounded to the millisecond (empty: no figures)."""
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:  # nearest rank: with 60 values p99 is the largest
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3)

    return {"p50": round(statistics.median(ordered), 3), "p90": q(0.9), "p99": q(0.99),
            "max": round(ordered[-1], 3), "min": round(ordered[0], 3)}
