"""A three-hour room must not cost more memory at its end than at its start: twelve minutes of
program fed faster than real time, then the memory the process holds is measured."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from packager.pipeline import Packager
from packager.settings import PackagerSettings
from tests.support.audio import feed_as_encoded, program_tone

pytestmark = pytest.mark.slow
MINUTES = 12
# 7 MiB over 12 minutes (3 375 parts per rendition): a leak of 2.1 kB a part fails the test.
# Measured here: +1.0, +1.0 and +1.6 MiB over 12 minutes (+1.7 and -13.4 over 20).
BOUND_MIB = 7
ROOT = Path(__file__).resolve().parents[2]
RELEASED_WITHIN = 6.0  # seconds: an ended epoch leaves memory 5 s after it stops


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


async def _broadcast(packager: Packager, room: str, seconds: float) -> None:
    b = packager.start_broadcast(room)
    await feed_as_encoded(b, program_tone(10), seconds)
    await b.close()


async def _released(packager: Packager) -> bool:
    """Whether every ended epoch has left memory within RELEASED_WITHIN seconds."""
    deadline = asyncio.get_running_loop().time() + RELEASED_WITHIN
    while packager.broadcasts or packager.hub.rooms:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _measure(data: Path) -> dict[str, object]:
    """The scenario, in a process of its own: RSS before and after, and what was left."""
    packager = Packager(PackagerSettings(data_dir=data, publish_state=False))
    await packager.start()
    await _broadcast(packager, "warm-up", 30)  # codecs, pools and caches loaded once
    await _released(packager)  # the warm-up's epoch leaves memory
    gc.collect()
    start = _rss_kib()
    await _broadcast(packager, "long", MINUTES * 60)
    released = await _released(packager)
    gc.collect()
    end = _rss_kib()
    await packager.close()
    return {"start": start, "end": end, "released": released}


def test_twelve_minutes_end_with_memory_back_where_it_started(tmp_path: Path) -> None:
    # A fresh interpreter: in a test process that ran other tests first, the heap's own
    # fragmentation moved RSS by more than the bound (+18 MiB from 396 MiB, -8 MiB alone).
    script = ("import asyncio, json, sys; from pathlib import Path; "
              "from tests.packager.test_long_broadcast import _measure; "
              "print(json.dumps(asyncio.run(_measure(Path(sys.argv[1])))))")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    start, end = int(m["start"]), int(m["end"])
    assert m["released"], "ended broadcasts are released"
    segments = list((tmp_path / "live/long/aac96").glob("e*/s*.m4s"))
    assert len(segments) >= MINUTES * 60 / 1.92 - 1
    print(f"{MINUTES} min broadcast: RSS {start / 1024:.1f} MiB before, {end / 1024:.1f} MiB "
          f"after ({(end - start) / 1024:+.1f} MiB)")
    assert end - start < BOUND_MIB * 1024, \
        f"memory came back to where it started (within {BOUND_MIB} MiB)"
