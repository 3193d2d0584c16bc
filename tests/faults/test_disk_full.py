"""A full local disk: the folder store (and its spill folder) on a small tmpfs that fills up
while a room is on air. Listeners keep getting parts from memory, the error is visible (log,
metric, /healthz), nothing is spilled onto the same full disk, and once space is freed the
backlog is written and the recording is complete.

The small filesystem is a tmpfs mounted for the test (root with CAP_SYS_ADMIN, as in CI's
container); where mounting is not permitted the test is skipped and says so.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.disk import fill
from tests.support.procs import Service, free_port, wait_http

pytestmark = pytest.mark.slow
TOKEN = "disk-full-admin-token-0123456789"
FULL_SECONDS = 5.0


def origin_metric(origin: str, name: str) -> float:
    text = httpx.get(f"{origin}/metrics", timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m, name
    return float(m[1])


def newest_part(origin: str) -> tuple[int, int, int]:
    """(segments listed + media sequence, parts listed, status of the newest part)."""
    r = httpx.get(f"{origin}/live/demo/aac96/live.m3u8", timeout=5)
    assert r.status_code == 200, r.text
    parts = re.findall(r'#EXT-X-PART:DURATION=[\d.]+,URI="([^"]+)"', r.text)
    seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", r.text)[1])  # type: ignore[index]
    segments = len([ln for ln in r.text.splitlines() if ln and not ln.startswith("#")])
    part = httpx.get(f"{origin}/live/demo/aac96/{parts[-1]}", timeout=5)
    return seq + segments, len(parts), part.status_code


def test_a_full_disk_is_reported_while_listeners_play_from_memory_and_the_backlog_lands(
        tmp_path: Path, small_disk: Path) -> None:
    control, origin_port, rtmp = free_port(), free_port(), free_port()
    origin, api = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{control}"
    (tmp_path / "db").mkdir()
    env = {"TOWNSQUARE_ADMIN_TOKEN": TOKEN,
           # The rooms database stays on the big disk: this drill is about the store.
           "TOWNSQUARE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db' / 'ts.db'}",
           "TOWNSQUARE_STORE_RETRY_MAX_SECONDS": "0.5",
           # Small enough that the writer would spill during the outage (onto the full disk).
           "TOWNSQUARE_STORE_MEMORY_BYTES": "65536"}
    svc = Service(["up", "--demo", "demo", "--no-edge", "--data", str(small_disk),
                   "--control-port", str(control), "--origin-port", str(origin_port),
                   "--rtmp-port", str(rtmp)], tmp_path / "up.log", env)
    filler: Path | None = None
    try:
        wait_http(f"{origin}/healthz", 60, svc.proc)
        wait_http(f"{api}/healthz", 60, svc.proc)
        wait_http(f"{origin}/live/demo/master.m3u8", 30, svc.proc)
        stored = small_disk / "live" / "demo"
        deadline = time.monotonic() + 20
        while not list(stored.glob("aac96/*/s*.m4s")):
            assert time.monotonic() < deadline, "no segment reached the disk"
            time.sleep(0.2)

        filler = fill(small_disk)
        full_at = time.monotonic()
        seen: list[tuple[int, int, int]] = []
        while time.monotonic() - full_at < FULL_SECONDS:
            seen.append(newest_part(origin))
            time.sleep(0.25)
        assert all(status == 200 for _, _, status in seen), seen
        assert seen[-1][0] > seen[0][0], f"the live playlist stood still: {seen}"
        store = httpx.get(f"{api}/healthz", timeout=5).json()["store"]
        assert not store["ok"] and "is full" in str(store["error"]), store
        assert origin_metric(origin, "townsquare_store_full") == 1
        assert origin_metric(origin, "townsquare_store_pending_objects") > 0
        out = svc.output()
        assert "No space left on device" in out and "served from memory" in out, out[-3000:]
        assert "the spill folder is on the same full disk" in out
        assert "Traceback" not in out, out[-3000:]

        filler.unlink()
        filler = None
        freed_at = time.monotonic()
        while not (origin_metric(origin, "townsquare_store_full") == 0
                   and origin_metric(origin, "townsquare_store_pending_objects") == 0):
            assert time.monotonic() - freed_at < 20, "the backlog was not written"
            time.sleep(0.2)
        backlog_seconds = time.monotonic() - freed_at
        assert httpx.get(f"{api}/healthz", timeout=5).json()["store"]["ok"]
        assert "has space again" in svc.output()

        ended = httpx.post(f"{api}/rooms/demo/end", timeout=30,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert ended.status_code == 200, ended.text
        recordings = list(stored.glob("*/aac96/recording.m3u8"))
        deadline = time.monotonic() + 20
        while not recordings or "#EXT-X-ENDLIST" not in recordings[0].read_text():
            assert time.monotonic() < deadline, "the recording was not closed"
            time.sleep(0.2)
            recordings = list(stored.glob("*/aac96/recording.m3u8"))
        recording = recordings[0]
        # One epoch (no restart): its segments, numbered without a gap, each on disk.
        names = re.findall(r"^(\S+/s(\d+)\.m4s)$", recording.read_text(), re.MULTILINE)
        numbers = [int(n) for _, n in names]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        missing = [name for name, _ in names
                   if not (recording.parent / name).resolve().is_file()]
        assert not missing, f"segments listed but never written: {missing}"
        seconds = sum(float(d) for d in re.findall(r"#EXTINF:([\d.]+),", recording.read_text()))
        assert seconds > FULL_SECONDS + 2, f"the recording holds only {seconds:.1f} s"
        leftovers = [p.name for p in (small_disk / "spill").glob(".tmp-*")] \
            if (small_disk / "spill").is_dir() else []
        assert not leftovers, leftovers
        print(f"disk full for {FULL_SECONDS:.0f} s: {len(seen)} live checks all 200; backlog "
              f"written {backlog_seconds:.1f} s after space was freed; recording "
              f"{len(numbers)} segments, {seconds:.1f} s, none missing")
    finally:
        if filler is not None:
            os.unlink(filler)
        svc.stop()
