"""A three-hour room must not cost more memory at its end than at its start: thirty minutes of
program fed faster than real time, then the memory the process holds is measured."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import numpy as np
import pytest

from packager.pipeline import Packager
from packager.settings import PackagerSettings

pytestmark = pytest.mark.slow
MINUTES = 30


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


async def _broadcast(packager: Packager, room: str, seconds: float) -> None:
    t = np.arange(48_000 * 10) / 48_000
    block = np.vstack([np.sin(2 * np.pi * 330 * t)] * 2).astype(np.float32) * 0.2
    b = packager.start_broadcast(room)
    fed = 0.0
    while fed < seconds:
        b.feed(block)
        fed += 10
        while b._queued:  # never more than the encoder can take: faster than real time
            await asyncio.sleep(0.01)
    await b.close()


async def test_thirty_minutes_end_with_memory_back_where_it_started(tmp_path: Path) -> None:
    packager = Packager(PackagerSettings(data_dir=tmp_path, publish_state=False))
    await packager.start()
    await _broadcast(packager, "warm-up", 30)  # codecs, pools and caches loaded once
    await asyncio.sleep(6)  # the warm-up's epoch leaves memory
    gc.collect()
    start = _rss_kib()
    await _broadcast(packager, "long", MINUTES * 60)
    await asyncio.sleep(6)
    gc.collect()
    end = _rss_kib()
    assert not packager.broadcasts and not packager.hub.rooms, "ended broadcasts are released"
    segments = list((tmp_path / "live/long/aac96").glob("e*/s*.m4s"))
    assert len(segments) >= MINUTES * 60 / 1.92 - 1
    print(f"{MINUTES} min broadcast: RSS {start / 1024:.1f} MiB before, {end / 1024:.1f} MiB "
          f"after ({(end - start) / 1024:+.1f} MiB)")
    assert end - start < 16 * 1024, "memory came back to where it started (within 16 MiB)"
    await packager.close()
