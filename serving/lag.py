"""How late a service's event loop runs, for Prometheus and the log.

Everything a service does waits on its one event loop: a lease renewal, a request held for
a part, a part due to the encoder. When the loop is late (a CPU-starved machine, a call that
blocked it), all of them are late by as much, and the symptom shows far from the cause (a
room fenced for a renewal that "took" 2 s). A watcher sleeps a fixed tick and measures how
much later than asked it woke: every lateness goes into a histogram, and a stall of a second
or more is logged with its length, so a failure in a node's log can be told apart from a
slow database.

Written here, a dozen lines: prometheus-client measures processes, not event loops, and the
asyncio monitors on PyPI (aiomonitor, aiodebug) are consoles and slow-callback loggers, not
a metric.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Histogram

log = logging.getLogger("townsquare.loop")

TICK_SECONDS = 0.25
# A loop this late is logged (once per stall: the watcher wakes once, however long it took).
STALL_SECONDS = 1.0
LAG = Histogram(
    "townsquare_event_loop_lag_seconds",
    f"How much later than due the event loop woke a {TICK_SECONDS} s timer",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)


async def watch_lag(tick: float = TICK_SECONDS) -> None:
    """Measure the running loop's lateness until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick
        await asyncio.sleep(tick)
        late = max(0.0, loop.time() - due)
        LAG.observe(late)
        if late >= STALL_SECONDS:
            log.warning("event loop stalled: a %.2f s timer woke %.2f s late", tick, late)
