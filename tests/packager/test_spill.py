"""Spilled objects on a real folder: whole or not counted, oldest first, torn files caught."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from packager.errors import SpillCorrupt
from packager.spill import SpillFolder


def test_spilled_object_reads_back_with_its_key_and_cache_control(tmp_path: Path) -> None:
    folder = SpillFolder(tmp_path / "spill")
    written = folder.write("live/r/b/aac96/p1.0.m4s", b"\x00part\xff" * 100, "public, immutable")
    (found,) = folder.scan()
    assert found == written
    assert (found.key, found.cache_control, found.size) == (
        "live/r/b/aac96/p1.0.m4s", "public, immutable", 600)
    assert folder.read(found) == b"\x00part\xff" * 100
    folder.remove(found)
    assert folder.scan() == []


def test_missing_folder_holds_nothing(tmp_path: Path) -> None:
    assert SpillFolder(tmp_path / "never-made").scan() == []


def test_scan_lists_objects_oldest_first_across_runs(tmp_path: Path) -> None:
    first_run, second_run = SpillFolder(tmp_path), SpillFolder(tmp_path)
    for i in range(3):
        first_run.write(f"a{i}", b"x", "no-cache")
    for i in range(3):
        second_run.write(f"b{i}", b"y", "no-cache")
    assert [s.key for s in SpillFolder(tmp_path).scan()] == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_torn_file_is_set_aside_and_never_read_as_an_object(tmp_path: Path) -> None:
    folder = SpillFolder(tmp_path)
    whole = folder.write("whole", b"1" * 1000, "no-cache")
    torn = folder.write("torn", b"2" * 1000, "no-cache")
    with open(torn.path, "r+b") as f:
        f.truncate(torn.path.stat().st_size - 10)
    garbage = folder.write("garbage", b"3", "no-cache")
    garbage.path.write_bytes(b"not a spill file")

    with pytest.raises(SpillCorrupt, match="torn"):
        folder.read(torn)
    assert [s.key for s in folder.scan()] == ["whole"]
    assert sorted(p.name.endswith(".bad") for p in tmp_path.iterdir()) == [False, True, True]
    assert folder.read(whole) == b"1" * 1000


def test_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    folder = SpillFolder(tmp_path)
    spilled = folder.write("k", b"abcdef", "no-cache")
    raw = bytearray(spilled.path.read_bytes())
    raw[-1] ^= 0xFF
    spilled.path.write_bytes(bytes(raw))
    with pytest.raises(SpillCorrupt):
        folder.read(spilled)


def test_temporary_files_are_not_counted_and_stale_ones_are_removed(tmp_path: Path) -> None:
    folder = SpillFolder(tmp_path)
    folder.write("kept", b"x", "no-cache")
    fresh = tmp_path / ".tmp-00000000000000000001-1-00000000.spill"
    stale = tmp_path / ".tmp-00000000000000000002-1-00000001.spill"
    fresh.write_bytes(b"half an obj")
    stale.write_bytes(b"half an obj")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert [s.key for s in folder.scan()] == ["kept"]
    assert fresh.exists(), "a fresh temporary file may be a write in progress"
    assert not stale.exists()


def test_a_killed_writer_leaves_every_acknowledged_object_whole(tmp_path: Path) -> None:
    """SIGKILL mid-spill: every write that returned is found whole; nothing else counts."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from packager.spill import SpillFolder
        folder = SpillFolder(Path({str(tmp_path)!r}))
        i = 0
        while True:
            folder.write(f"obj{{i}}", bytes([i % 256]) * 200_000, "no-cache")
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 40:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    folder = SpillFolder(tmp_path)
    found = {s.key: s for s in folder.scan()}
    assert {f"obj{i}" for i in acknowledged} <= set(found)
    for key, spilled in found.items():
        i = int(key.removeprefix("obj"))
        assert folder.read(spilled) == bytes([i % 256]) * 200_000
    assert not list(tmp_path.glob("*.bad"))
