"""Per-case bounds the fuzz targets hold parsers to: a deadline and an allocation ceiling.

`deadline` arms SIGALRM (the main thread only, where pytest runs tests), so a parser stuck in
a loop fails that one case with the input that did it instead of eating the run's timeout.
`AllocationBound` reads tracemalloc's peak for one call. Server targets allocate on another
thread and in C, so they are measured by RSS instead, and not over the Hypothesis run itself:
Hypothesis keeps every example's choices (about 200 MiB for ten thousand HTTP requests), which
would drown what a server holds. `rss_growth_over` runs a replay of the last inputs after the
run, when the servers are warm and Hypothesis is idle: a server that keeps something per
request grows there; one that is bounded does not.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Self, TypeVar

T = TypeVar("T")


class CaseHung(AssertionError):
    """One input kept a parser busy past its deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        raise CaseHung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    # pytest-timeout may have an alarm of its own running: give it back what is left of it.
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


class AllocationBound:
    """Peak Python allocation of one case, traced from `__enter__` to `__exit__`."""

    def __init__(self) -> None:
        self.peak = 0

    def __enter__(self) -> Self:
        # Traced for the case only: tracing Hypothesis's own work would triple its cost.
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@contextmanager
def bounded(input_size: int, seconds: float = 2.0, factor: int = 16,
            slack: int = 1 << 20) -> Iterator[None]:
    """A pure parser's case: done within `seconds`, allocating at most `factor` × the input
    plus `slack` bytes (a parser that buffers what it is given is fine; one that allocates
    what a length field claims is not)."""
    with AllocationBound() as mem, deadline(seconds):
        yield
    limit = factor * input_size + slack
    assert mem.peak <= limit, f"one case allocated {mem.peak} bytes (bound {limit})"


# Inputs replayed after a server target's run to measure what the servers keep.
REPLAY = 1000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def rss_growth_over(replay: Callable[[Sequence[T]], object], inputs: Sequence[T],
                    batch: int) -> int:
    """RSS growth (bytes) while `replay` is given `inputs`, `batch` at a time."""
    gc.collect()
    before = rss_bytes()
    for i in range(0, len(inputs), batch):
        replay(inputs[i : i + batch])
    gc.collect()
    return rss_bytes() - before
