"""Local capture: a source played into a broadcast at real time, no server involved.

The loop keeps its own sample clock against `time.monotonic()`: it sends 20 ms blocks and
sleeps until the wall clock catches up with the samples sent, so it neither drifts nor
bursts. A source that runs dry ends the broadcast.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ingest.sources import RATE, Source
from packager.pipeline import Broadcast

log = logging.getLogger(__name__)

BLOCK = 960  # 20 ms


async def play(source: Source, broadcast: Broadcast, stop: asyncio.Event | None = None) -> int:
    """Feed `source` into `broadcast` at real time until it ends or `stop` is set.
    Returns the number of samples fed; the caller closes the broadcast."""
    sent = 0
    t0 = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            # Stay one block ahead of the wall clock, in whole blocks.
            elapsed = int((time.monotonic() - t0) * RATE)
            due = (elapsed // BLOCK + 2) * BLOCK
            while sent < due:
                want = min(due - sent, RATE // 5)
                block = (await asyncio.to_thread(source.read, want) if source.may_block
                         else source.read(want))
                if block is None:
                    return sent
                broadcast.feed(block)
                sent += block.shape[1]
            # Wake when the wall clock has used up one block of the lead.
            await asyncio.sleep(max(0.005, t0 + (sent - BLOCK) / RATE - time.monotonic()))
    finally:
        source.close()
    return sent
