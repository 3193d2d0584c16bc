"""The write-ahead journal: parts on local disk before listeners are told of them.

The origin lists a part the moment it is cut, and the store writer uploads it in the
background; a process killed in between (`kill -9`, the out-of-memory killer) would take
parts that listeners have heard with it. So every durable put is first appended to a
journal file, and marked done there once it is stored (or spilled, or no longer wanted);
the next start hands what a dead run left undone to the spill folder, which uploads it
before a room resumes from the store.

One spill file per part would do the same, but creating a file cost about 270 µs of CPU on
this project's machines, against 18 µs here for a record and its mark: at fourteen parts a
second per room, a twentieth of a room's encoding cost against noise. Hence a journal,
written here by hand: its framing is a few dozen lines, and no library keeps a log of
records with per-record acknowledgement without a database's weight.

    {wall-clock ns:020d}-{pid}.journal, a run of records:
        MAGIC (4 bytes) | header length (4, big-endian) | data length (4) | header | data
        header = JSON {"key", "cache_control", "crc32"} for an object,
                 {"done": key} once that object needs the journal no more

Appends are not fsynced (as the spill folder's files): they survive the process dying, not
the machine. A record torn by a crash mid-append ends the file's reading; it was never
acknowledged. A file rolls over at `ROLL_BYTES` and is deleted once every object in it is
done; a mark can then be lost with a later file, so an object may be uploaded twice (the
same bytes under the same key), never lost. One journal (process) per folder.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from packager.spill import SpillFolder

log = logging.getLogger(__name__)

MAGIC = b"TSJ1"
SUFFIX = ".journal"
_HEAD = struct.Struct(">4sII")
ROLL_BYTES = 4 << 20  # about 1 300 parts: a room's 90 s, or 13 rooms' 7 s


@dataclass(eq=False)
class JournalFile:
    """One file of the journal; `open` counts its objects not yet done."""

    path: Path
    fd: int | None
    size: int = 0
    open: int = 0


@dataclass(eq=False)
class Record:
    """An object in the journal, until `Journal.done`."""

    key: str
    file: JournalFile
    released: bool = field(default=False)


class Journal:
    """Append objects before they are listed; mark them done once stored."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._current: JournalFile | None = None
        self._mine: set[str] = set()  # this run's file names: never recovered by it
        self._marks_failing = False
        self.pending = 0  # objects appended and not yet done
        self.disk_bytes = 0  # bytes of this run's journal files still on disk

    def append(self, key: str, data: bytes, cache_control: str) -> Record:
        """Write `data` under `key` to the journal; raises OSError when the disk refuses
        (nothing of it is then counted)."""
        header = json.dumps({"key": key, "cache_control": cache_control,
                             "crc32": zlib.crc32(data)}).encode()
        f = self._file()
        self._write(f, _HEAD.pack(MAGIC, len(header), len(data)) + header + data)
        f.open += 1
        self.pending += 1
        return Record(key, f)

    def done(self, record: Record) -> None:
        """The object is stored, spilled or no longer wanted: the journal lets it go (a
        file whose objects are all done is deleted)."""
        if record.released:
            return
        record.released = True
        self.pending -= 1
        f = record.file
        f.open -= 1
        if f.open == 0 and f is not self._current:
            self._delete(f)
        elif self._current is not None:
            # Marked in the file appended to now, whichever holds the object.
            marker = json.dumps({"done": record.key}).encode()
            try:
                self._write(self._file(), _HEAD.pack(MAGIC, len(marker), 0) + marker)
            except OSError as exc:  # then uploaded again by the next start: harmless
                if not self._marks_failing:
                    self._marks_failing = True
                    log.warning("journal %s: cannot mark objects done (%s): a crash now "
                                "has the next start upload them again", self.root, exc)
            else:
                self._marks_failing = False

    def close(self) -> None:
        """Stop appending; this run's last file is deleted if all its objects are done."""
        f, self._current = self._current, None
        if f is not None:
            self._close_fd(f)
            if f.open == 0:
                self._delete(f)

    def recover(self, spill: SpillFolder) -> int:
        """Hand the objects an earlier run's journal left undone to `spill` (uploaded from
        there, as anything spilled) and delete its files; returns how many. Blocking I/O:
        the writer runs it on its own thread, before it scans the spill folder."""
        if not self.root.is_dir():
            return 0
        paths = [p for p in sorted(self.root.glob(f"*{SUFFIX}")) if p.name not in self._mine]
        undone: dict[str, tuple[bytes, str]] = {}
        for path in paths:  # oldest first: a mark may sit in a later file than its object
            try:
                _read(path.read_bytes(), path, undone)
            except OSError as exc:
                log.error("journal %s: cannot read it: %s", path, exc)
                return 0  # left in place for the next start
        for key, (data, cache_control) in undone.items():
            spill.write(key, data, cache_control)  # OSError: the files stay, tried again
        for path in paths:
            path.unlink(missing_ok=True)
        return len(undone)

    # --- internals --------------------------------------------------------------------
    def _file(self) -> JournalFile:
        f = self._current
        if f is not None and f.size < ROLL_BYTES:
            return f
        if f is not None:
            self._close_fd(f)
            if f.open == 0:
                self._delete(f)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        # Named as this run's before it exists: `recover`, on the writer's thread, must
        # never take a file this run is writing for a dead run's.
        self._mine.add(path.name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._current = JournalFile(path, fd)
        return self._current

    def _write(self, f: JournalFile, blob: bytes) -> None:
        assert f.fd is not None
        try:
            written = os.write(f.fd, blob)
        except OSError:
            self._abandon(f)
            raise
        f.size += written
        self.disk_bytes += written
        if written != len(blob):
            self._abandon(f)
            raise OSError(f"short write to {f.path.name} ({written} of {len(blob)} bytes)")

    def _abandon(self, f: JournalFile) -> None:
        """An append to `f` failed (a full disk), perhaps halfway: a reader stops at the
        tear, so nothing more goes after it; the next append opens a new file."""
        if f is self._current:
            self._current = None
        self._close_fd(f)
        if f.open == 0:
            self._delete(f)

    def _close_fd(self, f: JournalFile) -> None:
        if f.fd is not None:
            try:
                os.close(f.fd)
            except OSError as exc:
                log.warning("journal %s: close failed: %s", f.path.name, exc)
            f.fd = None

    def _delete(self, f: JournalFile) -> None:
        try:
            f.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("journal %s: cannot delete it: %s", f.path.name, exc)
            return
        self.disk_bytes -= f.size


def _read(blob: bytes, path: Path, undone: dict[str, tuple[bytes, str]]) -> None:
    """Apply one journal file to `undone` (objects not marked done, in the order appended)."""
    at = 0
    while at + _HEAD.size <= len(blob):
        magic, head_len, data_len = _HEAD.unpack_from(blob, at)
        start = at + _HEAD.size
        end = start + head_len + data_len
        if magic != MAGIC or end > len(blob):
            log.warning("journal %s: torn at byte %d (a crash mid-append); read up to there",
                        path.name, at)
            break
        try:
            header = json.loads(blob[start:start + head_len])
        except ValueError:
            log.warning("journal %s: unreadable record at byte %d; read up to there",
                        path.name, at)
            break
        data = blob[start + head_len:end]
        at = end
        if "done" in header:
            undone.pop(str(header["done"]), None)
        elif zlib.crc32(data) == header.get("crc32"):
            undone[str(header["key"])] = (data, str(header["cache_control"]))
        else:
            log.warning("journal %s: %s fails its checksum; left out", path.name,
                        header.get("key"))
