"""The ledger: what happens to rooms on air, written to the registry in order, off the audio path.

Rooms change state inside the event loop's hot paths (a speaker joins, a segment is cut):
they cannot wait for a database. They append to the ledger instead; one task writes each
entry in order, retrying with backoff while the database is down, so rooms on air never
notice an outage and nothing recorded is lost once it returns. Progress entries (a room's
next media sequence number) supersede each other: only the newest per room is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from registry import RegistryError, RegistryUnavailable
from serving.tasks import cancel_and_wait

log = logging.getLogger("townsquare.ingest.ledger")

LEDGER_PENDING = Gauge("townsquare_ingest_ledger_pending", "Registry writes waiting")
# Entries held while the database is away: hours of state changes for a busy node. Past it
# the oldest progress entries go first (they are superseded anyway), state changes never.
MAX_ENTRIES = 10_000


@dataclass(slots=True)
class _Entry:
    what: str
    write: Callable[[], Awaitable[object]]
    progress_of: str | None  # room name for entries a newer one supersedes


class Ledger:
    def __init__(self, retry_max: float = 5.0) -> None:
        self.retry_max = retry_max
        self._entries: deque[_Entry] = deque()
        self._progress: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    def append(self, what: str, write: Callable[[], Awaitable[object]],
               progress_of: str | None = None) -> None:
        if progress_of is not None:
            queued = self._progress.get(progress_of)
            if queued is not None:
                queued.write = write  # the newer progress replaces the queued one
                return
        entry = _Entry(what, write, progress_of)
        if len(self._entries) >= MAX_ENTRIES:
            self._drop_oldest_progress()
        self._entries.append(entry)
        if progress_of is not None:
            self._progress[progress_of] = entry
        LEDGER_PENDING.set(len(self._entries))
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger")

    def _drop_oldest_progress(self) -> None:
        for entry in self._entries:
            if entry.progress_of is not None:
                self._entries.remove(entry)
                self._progress.pop(entry.progress_of, None)
                return

    @property
    def pending(self) -> int:
        return len(self._entries)

    async def flush(self, deadline: float, when: str = "at shutdown") -> bool:
        """Wait until every entry is written or `deadline` seconds have passed."""
        try:
            await asyncio.wait_for(self._idle.wait(), deadline)
            return True
        except TimeoutError:
            log.error("registry: %d writes not done %s (%s)", len(self._entries), when,
                      self.last_error or "still trying")
            return False

    async def close(self, deadline: float) -> None:
        await self.flush(deadline)
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._entries:
                entry = self._entries[0]
                if entry.progress_of is not None:
                    self._progress.pop(entry.progress_of, None)
                try:
                    await entry.write()
                except RegistryUnavailable as exc:
                    if entry.progress_of is not None and entry.progress_of not in self._progress:
                        self._progress[entry.progress_of] = entry  # still the newest: keep it
                    if self.last_error is None:
                        log.error("registry unavailable, keeping room changes until it "
                                  "returns: %s", exc)
                    self.last_error = str(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                except RegistryError as exc:
                    log.error("registry refused %s: %s", entry.what, exc)
                if self.last_error is not None:
                    log.info("registry reachable again")
                self.last_error = None
                delay = 0.2
                self._entries.popleft()
                LEDGER_PENDING.set(len(self._entries))
            self._idle.set()
