"""`townsquare repair`: after a crash, the recording is rebuilt from the store by hand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import m3u8
import pytest

from tests.support.procs import Service, free_port, wait_http

pytestmark = pytest.mark.slow


def _repair(data: Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, "-m", "townsquare", "repair", "rep", "--data",
                          str(data), *extra], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_repair_rebuilds_and_closes_a_crashed_recording_and_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    origin = Service(["origin", "--demo", "rep", "--port", str(port), "--data", str(data)],
                     tmp_path / "origin.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/live/rep/master.m3u8", 30, origin.proc)
        time.sleep(5)
    finally:
        origin.proc.send_signal(signal.SIGKILL)
        origin.proc.wait(10)
        origin.stop()
    bid = json.loads((data / "live/rep/room.json").read_text())["broadcast"]
    stored = sorted((data / "live/rep/aac96").glob("e*/s*.m4s"))
    cut = sorted((data / "live/rep/aac96").glob("e*/p*.m4s"))
    assert stored and cut

    first = _repair(data, "--broadcast", bid, "--end")
    assert f"broadcast {bid}" in first and "ended" in first
    rec = m3u8.loads((data / f"live/rep/{bid}/aac96/recording.m3u8").read_text())
    assert rec.is_endlist and len(rec.segments) == len(stored)
    again = _repair(data, "--broadcast", bid, "--end")
    assert "0 index entries rebuilt" in again
