"""Objects kept on local disk while the store cannot take them.

The writer spills an object when its memory bound is full, and everything still unsent
when a drain runs out of time; the next run uploads what it finds here. One object is one
file, so that writing, counting and deleting an object are each one filesystem operation:

    {wall-clock ns:020d}-{pid}-{n:08d}.spill
        MAGIC (8 bytes) | header length (4 bytes, big-endian) | header | data
        header = JSON {"key", "cache_control", "size", "crc32"}

Key and Cache-Control live in the same file as the data, so there is no sidecar that a
crash could separate from its object. A file is written as `.tmp-<name>` and renamed into
place: a name without the prefix is always a whole object (the rename is the
acknowledgement), a crash mid-write leaves only a temporary file that nothing counts and
`scan()` later removes. Files are not fsynced (one fsync per 2 kB part would cost more than
the upload it replaces): they survive the process dying, and a file torn by a power cut is
caught by its size and CRC and set aside as `*.bad`, never uploaded as garbage.
Names sort oldest first across runs. One writer (process) per folder.

Everything here is blocking file I/O; the writer calls it from its own thread.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from packager.errors import SpillCorrupt

log = logging.getLogger(__name__)

MAGIC = b"TSQSPL1\n"
SUFFIX = ".spill"
TMP_PREFIX = ".tmp-"
_HEAD = struct.Struct(">8sI")
_MAX_HEADER = 64 * 1024
# A temporary file younger than this may belong to a write still in progress.
_STALE_TMP_SECONDS = 60.0


@dataclass(frozen=True)
class SpilledObject:
    """One object on disk: where it is and what to upload it as."""

    path: Path
    key: str
    cache_control: str
    size: int


class SpillFolder:
    """A folder of spilled objects. The folder is created on first write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._names = itertools.count()

    def write(self, key: str, data: bytes, cache_control: str) -> SpilledObject:
        """Store one object; when this returns the object is counted by `scan()`."""
        self.root.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"key": key, "cache_control": cache_control, "size": len(data),
                             "crc32": zlib.crc32(data)}).encode()
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._names):08d}{SUFFIX}"
        path = self.root / name
        tmp = self.root / (TMP_PREFIX + name)
        try:
            with open(tmp, "wb") as f:
                f.write(_HEAD.pack(MAGIC, len(header)) + header)
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SpilledObject(path, key, cache_control, len(data))

    def device(self) -> int | None:
        """The st_dev of the filesystem spilled objects land on (the folder, or its nearest
        existing parent before the first spill); None if none can be read."""
        for path in (self.root, *self.root.parents):
            try:
                return os.stat(path).st_dev
            except OSError:
                continue
        return None

    def read(self, spilled: SpilledObject) -> bytes:
        """The object's data, checked against its header."""
        try:
            raw = spilled.path.read_bytes()
        except OSError as exc:
            raise SpillCorrupt(f"spilled {spilled.key} unreadable: {exc}") from exc
        header = _parse_header(raw[:_HEAD.size + _MAX_HEADER], spilled.path)
        data = raw[header.data_offset:]
        if len(data) != header.size or zlib.crc32(data) != header.crc32:
            raise SpillCorrupt(f"spilled {spilled.key} in {spilled.path.name} is torn")
        return data

    def remove(self, spilled: SpilledObject) -> None:
        spilled.path.unlink(missing_ok=True)

    def scan(self) -> list[SpilledObject]:
        """Every whole object in the folder, oldest first. Stale temporary files are
        removed; files that cannot be parsed are renamed to `*.bad` and left for a human."""
        if not self.root.is_dir():
            return []
        found: list[SpilledObject] = []
        now = time.time()
        for path in sorted(self.root.iterdir()):
            name = path.name
            if name.startswith(TMP_PREFIX):
                try:
                    if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                        path.unlink()
                except FileNotFoundError:
                    pass
                continue
            if not name.endswith(SUFFIX) or not path.is_file():
                continue
            try:
                found.append(self._describe(path))
            except FileNotFoundError:
                continue  # stored and removed by this run's writer since the listing
            except SpillCorrupt as exc:
                log.error("%s; moved aside as %s.bad", exc, name)
                path.replace(path.with_name(name + ".bad"))
        return found

    def _describe(self, path: Path) -> SpilledObject:
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD.size + _MAX_HEADER)
                total = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise  # gone since it was listed: stored by the writer meanwhile, not corrupt
        except OSError as exc:
            raise SpillCorrupt(f"spilled object {path.name} unreadable: {exc}") from exc
        header = _parse_header(head, path)
        if total - header.data_offset != header.size:
            raise SpillCorrupt(f"spilled object {path.name} is torn "
                               f"({total - header.data_offset} of {header.size} bytes)")
        return SpilledObject(path, header.key, header.cache_control, header.size)


class _Header(NamedTuple):
    key: str
    cache_control: str
    size: int
    crc32: int
    data_offset: int


def _parse_header(raw: bytes, path: Path) -> _Header:
    if len(raw) < _HEAD.size:
        raise SpillCorrupt(f"spilled object {path.name} is torn (no header)")
    magic, length = _HEAD.unpack_from(raw)
    end = _HEAD.size + length
    if magic != MAGIC or length > _MAX_HEADER or len(raw) < end:
        raise SpillCorrupt(f"spilled object {path.name} has no valid header")
    try:
        meta = json.loads(raw[_HEAD.size:end])
        header = _Header(meta["key"], meta["cache_control"], meta["size"], meta["crc32"], end)
    except (ValueError, KeyError, TypeError):
        raise SpillCorrupt(f"spilled object {path.name} has no valid header") from None
    if not (isinstance(header.key, str) and isinstance(header.cache_control, str)
            and isinstance(header.size, int) and isinstance(header.crc32, int)):
        raise SpillCorrupt(f"spilled object {path.name} has no valid header")
    return header
