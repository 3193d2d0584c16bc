"""Local capture: a source played into a broadcast (or a room's mixer) at real time.

The loop keeps its own sample clock against `time.monotonic()`: it sends 20 ms blocks and
sleeps until the wall clock catches up with the samples sent, so it neither drifts nor
bursts. A source that runs dry ends the broadcast.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from ingest.sources import Source
from packager.ladder import SAMPLE_RATE

log = logging.getLogger(__name__)

BLOCK = 960  # 20 ms


async def play(source: Source, feed: Callable[[np.ndarray], None],
               stop: asyncio.Event | None = None) -> int:
    """Hand `source` to `feed` (a broadcast's or a speaker's) at real time until it ends or
    `stop` is set. Returns the number of samples fed; the caller closes what it fed."""
    sent = 0
    t0 = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            # Stay one block ahead of the wall clock, in whole blocks.
            elapsed = int((time.monotonic() - t0) * SAMPLE_RATE)
            due = (elapsed // BLOCK + 2) * BLOCK
            while sent < due:
                want = min(due - sent, SAMPLE_RATE // 5)
                block = (await asyncio.to_thread(source.read, want) if source.may_block
                         else source.read(want))
                if block is None:
                    return sent
                feed(block)
                sent += block.shape[1]
            # Wake when the wall clock has used up one block of the lead.
            await asyncio.sleep(max(0.005, t0 + (sent - BLOCK) / SAMPLE_RATE - time.monotonic()))
    finally:
        source.close()
    return sent
