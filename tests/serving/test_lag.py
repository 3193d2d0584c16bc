"""The event loop watcher: a loop held up by a blocking call is measured, and a stall of a
second or more is logged with its length."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from prometheus_client import REGISTRY

from serving.lag import watch_lag


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_blocked_loop_is_measured_and_its_stall_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    count = _sample("townsquare_event_loop_lag_seconds_count")
    on_time = _sample("townsquare_event_loop_lag_seconds_bucket", le="0.5")
    watcher = asyncio.create_task(watch_lag(tick=0.05))
    try:
        await asyncio.sleep(0.3)  # a few wake-ups on time
        with caplog.at_level(logging.WARNING, "townsquare.loop"):
            time.sleep(1.2)  # noqa: ASYNC251 - the loop held up, as by a call that never yields
            await asyncio.sleep(0.2)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    wakeups = _sample("townsquare_event_loop_lag_seconds_count") - count
    late = wakeups - (_sample("townsquare_event_loop_lag_seconds_bucket", le="0.5") - on_time)
    assert wakeups >= 4
    assert late >= 1, "the wake-up after the stall came late by it"
    told = [re.search(r"event loop stalled: a 0\.05 s timer woke (\d+\.\d+) s late",
                      r.getMessage()) for r in caplog.records if r.name == "townsquare.loop"]
    # 1.2 s held, less the part of a tick already slept when it began.
    assert any(m and float(m[1]) >= 1.1 for m in told), [r.getMessage() for r in caplog.records]
