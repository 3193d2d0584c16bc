"""A small real filesystem that tests fill up (the `small_disk` fixture): a tmpfs mounted
for the test (root with CAP_SYS_ADMIN, as in CI's container); where mounting is not
permitted the test is skipped and says so."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DISK_BYTES = 16 * 1024 * 1024


@contextmanager
def mounted_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A `DISK_BYTES` tmpfs mounted in `tmp_path` for as long as the block lasts."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                            str(mount)], capture_output=True, text=True, check=False)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {tried.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; return it."""
    filler = folder / "filler"
    block = bytes(64 * 1024)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        # Whatever fits below a block fills the rest.
        for size in (16_384, 4096, 512, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError:
                continue
    return filler

