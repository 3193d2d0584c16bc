"""The store writer: one per process, between every broadcast and the store.

`put()` returns at once and never raises for store trouble; uploads run in the background.
What it promises, and how:

- **Live edge first.** Two queues: `live` objects (parts, live playlists, master: what a
  listener near the live edge asks for) in the order they were put, and the backlog
  (everything else, anything that failed once, and live objects that waited longer than
  `LIVE_EDGE_SECONDS`, by then no use at the live edge) in the order it was written. After
  an outage the newest live objects (those of the last `LIVE_EDGE_SECONDS`) go first, then
  the backlog oldest first; objects spilled by an earlier run are the oldest backlog of all.
  While live objects keep every upload busy the backlog waits.
- **A key is one object.** A newer `put` of a key still waiting replaces the older one in
  its place in the queues (playlists are rewritten often: at the tail, a lagging store would
  never reach them). A key is never uploaded twice at once, so an older version can never
  land after a newer one.
- **Bounded memory, nothing lost.** Bytes held in memory (waiting or being uploaded) stay
  within `memory_bytes`; an object that does not fit is spilled to `spill_dir` on the
  spot (see `packager.spill`: one self-describing file per object, renamed into place).
  Spilled objects keep their place in the queues and are read back when their turn comes;
  to read one back the writer spills its newest in-memory objects if it must. Two
  exceptions, both logged: an object larger than the whole bound is held alone while it is
  sent, and an object that cannot be spilled (disk full) stays in memory, because losing
  audio is worse than exceeding the bound. Parts past the live edge are let go first then
  (their audio is in their segments), so an outage with a full disk grows memory by the
  segments alone, half of what is put.
- **Nothing listed is lost to a crash.** A `durable` put (parts and init segments: the
  origin lists them the moment they are cut) is appended to the write-ahead journal
  (`packager.journal`) before `put` returns, and let go there once stored or spilled. The
  next start hands what a dead run left to the spill folder; `recovered()` waits for it to
  be stored, and a resume calls it before it reads the store.
- **Shutdown never hangs.** `drain(deadline)` waits for everything put before it was
  called; when the deadline passes it spills whatever of that is not stored yet and returns
  False. `start()` of the next run uploads it.
- **A failing store is probed, not hammered.** The first failed upload pauses every upload;
  one probe at a time (`Store.check()`, so no object is reordered by being the probe) runs
  after an exponential backoff capped at `retry_max_seconds`, and a success resumes the
  queues. `StoreMisconfigured` is logged once (again only if the message changes), shown in
  `misconfigured` until a write succeeds, and probed every `retry_max_seconds`; objects are
  kept, and spilled once memory is full. `ObjectRejected` (an invalid key) can never
  succeed: that object is dropped, counted and logged.
- **A full local disk is said once, loudly.** `StoreFull` (a folder store with no space
  left) is logged as an error when it starts and when space is back, shown in `full` and
  `last_error`, and counted by `townsquare_store_full`; the probe writes real bytes, so it
  passes only once there is room. While the spill folder is on that same filesystem nothing
  is spilled (it would fail, or eat the room the store needs): objects stay in memory, beyond
  the bound if they must, exactly as when spilling fails.
- **Concurrency.** Up to `concurrency` uploads in flight; with more than one, objects of
  different keys may land in a different order than they were put (a playlist may land a
  moment before a part it lists).

`put()` spills on the spot (one small write into the page cache, and only while the store
is behind: it keeps the bound exact without a second copy waiting for a thread); the bulk
spill at a drain deadline and every read back run on the writer's own thread, store calls
on the store's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from hls.names import LIVE_ROOT, parse_object
from packager.errors import (
    ObjectRejected,
    SpillCorrupt,
    StoreError,
    StoreFull,
    StoreMisconfigured,
)
from packager.journal import ROLL_BYTES, Journal, Record
from packager.settings import StoreSettings
from packager.spill import SpilledObject, SpillFolder
from serving.tasks import cancel_and_wait

if TYPE_CHECKING:
    from packager.store import Store

log = logging.getLogger(__name__)

WRITES = Counter("townsquare_store_writes_total",
                 "Store writes by result: ok, retry (failed, kept), dropped (can never be "
                 "stored), spilled (moved to local disk), shed (a part past the live edge "
                 "let go while over the memory bound with nowhere to spill)", ["result"])
PENDING = Gauge("townsquare_store_pending_objects",
                "Objects not yet stored, in memory or spilled")
PENDING_BYTES = Gauge("townsquare_store_pending_bytes",
                      "Bytes of objects not yet stored held in memory")
MEMORY_BOUND = Gauge("townsquare_store_memory_bound_bytes",
                     "Most bytes the store writer holds in memory before spilling")
SPILLED = Gauge("townsquare_store_spilled_objects", "Objects waiting on local disk")
SPILLED_BYTES = Gauge("townsquare_store_spilled_bytes", "Bytes waiting on local disk")
JOURNALED = Gauge("townsquare_store_journal_objects",
                  "Parts and init segments on their way to the store with a copy in the "
                  "write-ahead journal (what a crash leaves for the next start)")
JOURNAL_BYTES = Gauge("townsquare_store_journal_bytes",
                      "Bytes of write-ahead journal files on local disk")
HEALTHY = Gauge("townsquare_store_healthy", "1 while the store takes writes, 0 while it fails")
FULL = Gauge("townsquare_store_full",
             "1 while the store's local filesystem has no space left, else 0")
LAST_OK = Gauge("townsquare_store_last_success_timestamp_seconds",
                "Unix time of the last successful store write")

# LL-HLS lists parts for about the last three segments (~6 s): a live object that waited
# longer is no use to a listener at the live edge and takes its turn in the backlog.
LIVE_EDGE_SECONDS = 6.0
# First retry delay; doubles up to `retry_max_seconds`.
RETRY_MIN_SECONDS = 0.1
# Replaced versions stay in the queues, each pointing to the newer one in its place, until
# popped; in a long outage, where playlists are rewritten many times a second, the queues are
# rebuilt (each place holding the newest version) once such leftovers outnumber them.
_COMPACT_AFTER = 4096


@dataclass(frozen=True)
class WriterLimits:
    """How much the writer may hold, where it spills, how it retries."""

    memory_bytes: int
    spill_dir: Path
    retry_max_seconds: float
    concurrency: int
    drain_seconds: float

    @classmethod
    def from_settings(cls, s: StoreSettings) -> WriterLimits:
        return cls(memory_bytes=s.store_memory_bytes,
                   spill_dir=s.store_spill_dir or s.data_dir / "spill",
                   retry_max_seconds=s.store_retry_max_seconds,
                   concurrency=s.store_concurrency,
                   drain_seconds=s.store_drain_seconds)


class _State(Enum):
    WAITING = "waiting"
    SENDING = "sending"
    DONE = "done"  # stored, dropped, or replaced by a newer version


@dataclass(eq=False, slots=True)
class _Entry:
    key: str
    cache_control: str
    size: int
    seq: int
    # The oldest unstored put this entry stands for (a replaced version counts as stored
    # when its replacement is): what `drain()` waits on.
    first_seq: int
    live: bool
    queued_at: float
    data: bytes | None  # None while only on disk
    spill: SpilledObject | None = None
    state: _State = _State.WAITING
    # The newer version of the key that took this one's place in its queue.
    newer: _Entry | None = None
    # Its copy in the write-ahead journal (a durable put), until stored or spilled.
    journal: Record | None = None


def _newest(e: _Entry) -> _Entry:
    while e.newer is not None:
        e = e.newer
    return e


class StoreWriter:
    """Uploads objects to a store in the background; see the module docstring."""

    def __init__(self, store: Store, limits: WriterLimits) -> None:
        self.store = store
        self.limits = limits
        # The newest store error since the last successful write, in words; None while the
        # store takes writes (health checks report it).
        self.last_error: str | None = None
        # Set while the store answers StoreMisconfigured; cleared by a successful write.
        self.misconfigured: str | None = None
        # Set while the store's filesystem is full (StoreFull); cleared by a successful write.
        self.full: str | None = None
        self.failures = 0  # failed store calls (uploads and probes)
        self.dropped = 0   # objects that could never be stored
        self.shed = 0      # parts let go past the live edge while over the bound (see put)
        self._over_bound_said = False
        self._spill = SpillFolder(limits.spill_dir)
        self._journal = Journal(limits.spill_dir / "journal")
        self._journal_broken = False
        # Journaled objects are held in memory too, so what the journal must keep is bounded
        # by `memory_bytes`; its files also hold objects already done, until each file's
        # last one is. Past this, nothing more is written ahead until it shrinks.
        self._journal_bound = 2 * limits.memory_bytes + 2 * ROLL_BYTES
        self._journal_over = False
        self._io = ThreadPoolExecutor(1, thread_name_prefix="townsquare-spill")
        self._seq = 0
        self._tiebreak = itertools.count()
        self._waiting: dict[str, _Entry] = {}
        self._sending: dict[str, _Entry] = {}
        self._parked: dict[str, _Entry] = {}  # waiting for the same key to finish sending
        self._live: deque[_Entry] = deque()
        self._backlog: list[tuple[int, int, _Entry]] = []
        self._in_memory: dict[_Entry, None] = {}  # waiting entries holding data, oldest first
        self._unstored: list[tuple[int, int, _Entry]] = []  # by first_seq, for drain()
        self._stale = 0  # replaced or let-go entries left in the queues
        self._memory = 0
        self._spilled_objects = 0
        self._spilled_bytes = 0
        self._published = (0, 0, 0, 0, 0, 0)
        self._failing = False
        self._backoff = min(RETRY_MIN_SECONDS, limits.retry_max_seconds)
        self._spill_broken = False
        # The store is full and the spill folder is on the same filesystem: do not spill.
        self._spill_blocked = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._uploads: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        # Keys put before the scan of the spill folder ends: a spilled older version of one
        # of them must not be uploaded over it.
        self._recovering: set[str] | None = set()
        self._closing = False
        self._closed = False
        MEMORY_BOUND.set(limits.memory_bytes)

    # --- public -----------------------------------------------------------------------
    @property
    def pending_objects(self) -> int:
        """Objects not yet stored, wherever they are held."""
        return len(self._waiting) + len(self._sending)

    @property
    def pending_bytes(self) -> int:
        """Bytes held in memory for objects not yet stored (what `memory_bytes` bounds)."""
        return self._memory

    @property
    def spilled_objects(self) -> int:
        return self._spilled_objects

    @property
    def healthy(self) -> bool:
        return not self._failing

    def stored(self, key: str) -> bool:
        """Whether nothing put under `key` waits to be stored (in memory, spilled or on its
        way): every version put so far has landed, or none was put."""
        return key not in self._waiting and key not in self._sending and key not in self._parked

    def start(self) -> None:
        if self._dispatcher is not None:
            return
        loop = asyncio.get_running_loop()
        self._recovery = loop.create_task(self._recover(), name="store-writer-recovery")
        self._dispatcher = loop.create_task(self._dispatch(), name="store-writer")
        HEALTHY.set(1)

    def put(self, key: str, data: bytes, cache_control: str, *, live: bool = False,
            durable: bool = False) -> None:
        """Queue `data` for the store under `key`. `durable`: on local disk when this
        returns (the write-ahead journal, or spilled), so that a crash before it is stored
        leaves it to the next start: for what listeners are told of at once (parts, init
        segments), whose loss would be audio heard and never kept."""
        if self._closed:
            self._spill_after_close(key, data, cache_control)
            return
        self._seq += 1
        first = self._seq
        old = self._waiting.pop(key, None)
        if old is not None:
            first = old.first_seq
        e = _Entry(key, cache_control, len(data), self._seq, first, live, time.monotonic(), data)
        self._waiting[key] = e
        heapq.heappush(self._unstored, (first, next(self._tiebreak), e))
        if old is not None:
            # The newer version takes the older one's place in the queues. At its tail, a
            # key rewritten more often than a lagging store reaches the tail (a live
            # playlist, every part) would never be sent until the lag was gone.
            if self._parked.get(key) is old:
                self._parked[key] = e
            else:
                old.newer = e
            self._discard(old)
        if self._recovering is not None:
            self._recovering.add(key)
        if self._memory + e.size > self.limits.memory_bytes and self._spill_now(e):
            e.data = None
        else:
            self._hold(e)
            if durable:
                self._write_ahead(e)
            if self._memory > self.limits.memory_bytes:
                self._shed_parts()
        if old is None:
            self._enqueue(e)
        self._publish()
        self._wake.set()

    async def drain(self, deadline: float | None = None) -> bool:
        """Wait until everything put so far is stored; True if it is. When `deadline`
        seconds (default `drain_seconds`) pass first, spill what is not stored yet and
        return False."""
        loop = asyncio.get_running_loop()
        limit = self.limits.drain_seconds if deadline is None else deadline
        end = math.inf if math.isinf(limit) else loop.time() + max(0.0, limit)
        upto = self._seq
        if await self._stored_upto(upto, end):
            return True
        await self._spill_unstored(upto)
        log.warning("store %s: drain gave up after %.1f s; %d objects wait in %s for the store "
                    "(uploaded when it answers, or by the next start)", self.store.describe(),
                    limit, self._spilled_objects + self._journal.pending,
                    self.limits.spill_dir)
        return False

    async def recovered(self, deadline: float) -> bool:
        """Wait until what an earlier run left on disk (spilled, or in the journal of a
        crash) is stored: a room resumed from the store finds its last parts there. False
        when `deadline` seconds pass first (it stays queued)."""
        end = asyncio.get_running_loop().time() + max(0.0, deadline)
        stored = await self._stored_upto(0, end)  # what was read from disk: sequence <= 0
        return stored and (self._recovery is None or self._recovery.done())

    async def _stored_upto(self, upto: int, end: float) -> bool:
        """Wait until everything put up to sequence `upto` is stored (or `end` passes).
        Objects found on disk at start count as put before anything this run puts."""
        loop = asyncio.get_running_loop()
        if self._recovery is not None and not self._recovery.done():
            await asyncio.wait([self._recovery], timeout=_remaining(loop, end))
        while not self._drained(upto):
            remaining = _remaining(loop, end)
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                break
        return self._drained(upto)

    async def close(self, deadline: float | None = None) -> None:
        """Drain with `deadline`, then stop; whatever is still unstored stays spilled."""
        if self._closing:
            return
        self._closing = True
        await self.drain(deadline)
        self._closed = True
        await cancel_and_wait(self._dispatcher, self._recovery, *self._uploads)
        await self._spill_unstored(None)
        self._journal.close()  # what is neither stored nor spilled stays in it
        self._io.shutdown(wait=False)
        self._publish()

    # --- queues -----------------------------------------------------------------------
    def _enqueue(self, e: _Entry) -> None:
        if e.live:
            self._live.append(e)
        else:
            heapq.heappush(self._backlog, (e.seq, next(self._tiebreak), e))

    def _is_waiting(self, e: _Entry) -> bool:
        return e.state is _State.WAITING and self._waiting.get(e.key) is e

    def _next(self) -> _Entry | None:
        """The next entry to send, live first; None if nothing can be sent now."""
        now = time.monotonic()
        while self._live:
            e = _newest(self._live.popleft())
            if not self._is_waiting(e):
                continue
            if now - e.queued_at > LIVE_EDGE_SECONDS:
                e.live = False
                self._enqueue(e)
            elif e.key in self._sending:
                self._parked[e.key] = e
            else:
                return e
        while self._backlog:
            e = _newest(heapq.heappop(self._backlog)[2])
            if not self._is_waiting(e):
                continue
            if e.key in self._sending:
                self._parked[e.key] = e
            else:
                return e
        return None

    def _requeue_front(self, e: _Entry) -> None:
        if e.live:
            self._live.appendleft(e)
        else:
            self._enqueue(e)

    def _unpark(self, key: str) -> None:
        e = self._parked.pop(key, None)
        if e is not None and self._is_waiting(e):
            self._requeue_front(e)

    def _discard(self, e: _Entry) -> None:
        """Forget a waiting entry (replaced by a newer version)."""
        e.state = _State.DONE
        self._release(e)
        self._forget_spill(e)
        self._stale += 1
        if self._stale > _COMPACT_AFTER and 2 * self._stale > len(self._live) + len(self._backlog):
            self._compact()

    def _compact(self) -> None:
        self._live = deque(e for e in map(_newest, self._live) if self._is_waiting(e))
        self._backlog = [(seq, tie, e) for seq, tie, old in self._backlog
                         if self._is_waiting(e := _newest(old))]
        heapq.heapify(self._backlog)
        self._unstored = [t for t in self._unstored if t[2].state is not _State.DONE]
        heapq.heapify(self._unstored)
        self._stale = 0

    def _shed_parts(self) -> None:
        """Over the bound with nowhere to spill: let go of parts that are past the live
        edge, oldest first. No audio goes with them: a part's samples are also in its
        segment, complete and put by then (a segment is 1.92 s, the live edge 6 s), and
        only a player near the live edge ever wanted the part. Segments, init segments and
        playlists are kept, beyond the bound if they must be."""
        now = time.monotonic()
        for e in list(self._in_memory):
            if self._memory <= self.limits.memory_bytes:
                self._over_bound_said = False
                return
            if (now - e.queued_at > LIVE_EDGE_SECONDS and self._waiting.get(e.key) is e
                    and _is_part(e.key)):
                del self._waiting[e.key]
                self._discard(e)
                self.shed += 1
                WRITES.labels("shed").inc()
        if self._memory > self.limits.memory_bytes and not self._over_bound_said:
            self._over_bound_said = True
            log.error("store writer holds %d bytes, over its bound of %d, with nowhere to "
                      "spill: keeping segments and playlists in memory",
                      self._memory, self.limits.memory_bytes)

    def _hold(self, e: _Entry) -> None:
        """Count a waiting entry's data as held in memory."""
        self._memory += e.size
        self._in_memory[e] = None

    def _release(self, e: _Entry, sent: bool = False) -> None:
        """Drop an entry's data (on disk, stored, replaced, or no longer needed). Its bytes
        count in memory while it waits among the entries held, or, `sent`, while it was out
        being sent (taken from those held when the send began)."""
        if e in self._in_memory:
            del self._in_memory[e]
            self._memory -= e.size
        elif sent:
            self._memory -= e.size
        e.data = None
        self._unjournal(e)

    def _unjournal(self, e: _Entry) -> None:
        """The journal's copy is needed no more: stored, spilled, or replaced."""
        if e.journal is not None:
            self._journal.done(e.journal)
            e.journal = None

    def _forget_spill(self, e: _Entry) -> None:
        if e.spill is not None:
            try:
                self._spill.remove(e.spill)
            except OSError as exc:
                log.error("could not remove spilled %s: %s", e.key, exc)
            self._spilled_objects -= 1
            self._spilled_bytes -= e.size
            e.spill = None

    def _drained(self, upto: int) -> bool:
        self._prune_unstored()
        return not self._unstored or self._unstored[0][0] > upto

    def _prune_unstored(self) -> None:
        heap = self._unstored
        while heap and heap[0][2].state is _State.DONE:
            heapq.heappop(heap)

    # --- sending ----------------------------------------------------------------------
    async def _dispatch(self) -> None:
        if self._recovery is not None:
            # What an earlier run spilled is queued first (a folder scan: milliseconds), so
            # that nothing this run puts can overtake it as backlog.
            await asyncio.wait([self._recovery])
        while True:
            try:
                if self._failing:
                    await self._probe()
                    continue
                self._wake.clear()
                if len(self._sending) < self.limits.concurrency:
                    e = self._next()
                    if e is not None:
                        if self._reserve(e):
                            self._send(e)
                            continue
                        self._requeue_front(e)  # memory frees when an upload ends
                await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store writer: dispatch failed; carrying on")
                await asyncio.sleep(self.limits.retry_max_seconds)

    def _reserve(self, e: _Entry) -> bool:
        """Make room in memory to send `e` (already there, or read back from disk)."""
        if e.data is not None:
            return True
        bound = self.limits.memory_bytes
        while self._memory + e.size > bound and self._in_memory:
            victim = next(reversed(self._in_memory))
            if not self._spill_now(victim):
                break
            self._release(victim)
        if self._memory + e.size > bound and self._sending:
            return False
        if self._memory + e.size > bound:
            log.warning("store writer: exceeding the memory bound to send %s (%d bytes) "
                        "alone", e.key, e.size)
        self._memory += e.size
        return True

    def _send(self, e: _Entry) -> None:
        del self._waiting[e.key]
        self._in_memory.pop(e, None)
        e.state = _State.SENDING
        self._sending[e.key] = e
        task = asyncio.get_running_loop().create_task(self._upload(e), name=f"store-put-{e.key}")
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def _upload(self, e: _Entry) -> None:
        try:
            data = e.data
            if data is None:
                assert e.spill is not None
                data = await asyncio.get_running_loop().run_in_executor(
                    self._io, self._spill.read, e.spill)
            await self.store.put(e.key, data, e.cache_control)
        except (ObjectRejected, SpillCorrupt) as exc:
            self.dropped += 1
            WRITES.labels("dropped").inc()
            log.error("store %s: dropping %s, it can never be stored: %s",
                      self.store.describe(), e.key, exc)
            self._finish(e)
        except StoreError as exc:
            self._failed(e, exc)
        except asyncio.CancelledError:
            self._back_to_waiting(e)  # closing: `close()` spills it
            raise
        except Exception as exc:
            log.exception("store %s: unexpected error writing %s", self.store.describe(), e.key)
            self._failed(e, StoreError(f"unexpected {type(exc).__name__}: {exc}"))
        else:
            self._succeeded(e)
        finally:
            self._publish()
            self._wake.set()
            self._progress.set()
            self._progress = asyncio.Event()

    def _finish(self, e: _Entry) -> None:
        """`e` is stored or dropped: forget it."""
        del self._sending[e.key]
        e.state = _State.DONE
        self._release(e, sent=True)
        self._forget_spill(e)
        self._unpark(e.key)
        self._prune_unstored()

    def _succeeded(self, e: _Entry) -> None:
        self._finish(e)
        WRITES.labels("ok").inc()
        LAST_OK.set_to_current_time()
        self._backoff = min(RETRY_MIN_SECONDS, self.limits.retry_max_seconds)
        if self.misconfigured is not None:
            log.warning("store %s takes writes again (was: %s)", self.store.describe(),
                        self.misconfigured)
            self.misconfigured = None
        if self.full is not None:
            log.warning("store %s has space again; writing the %d objects that waited",
                        self.store.describe(), self.pending_objects)
            self.full = None
            self._spill_blocked = False
            FULL.set(0)
        self.last_error = None

    def _back_to_waiting(self, e: _Entry) -> None:
        """A send of `e` did not complete: keep it, unless a newer version is waiting."""
        del self._sending[e.key]
        newer = self._waiting.get(e.key)
        if newer is not None:
            if e.first_seq < newer.first_seq:
                newer.first_seq = e.first_seq
                heapq.heappush(self._unstored, (newer.first_seq, next(self._tiebreak), newer))
            e.state = _State.DONE
            self._release(e, sent=True)
            self._forget_spill(e)
        else:
            e.state = _State.WAITING
            e.live = False
            self._waiting[e.key] = e
            if e.spill is not None:
                self._release(e, sent=True)
            else:
                self._in_memory[e] = None  # its bytes are counted already
            self._enqueue(e)
        self._unpark(e.key)

    def _failed(self, e: _Entry, exc: StoreError) -> None:
        self.failures += 1
        WRITES.labels("retry").inc()
        self._back_to_waiting(e)
        self._note_error(exc)

    def _note_error(self, exc: Exception) -> None:
        self.last_error = str(exc)
        if isinstance(exc, StoreFull):
            if self.full is None:
                self._spill_blocked = (exc.device is not None
                                       and exc.device == self._spill.device())
                log.error("store %s. Listeners are served from memory; %d objects wait "
                          "%s; retried every %g s at most.", exc, self.pending_objects,
                          "in memory (the spill folder is on the same full disk)"
                          if self._spill_blocked else f"(spilled to {self.limits.spill_dir} "
                          f"beyond {self.limits.memory_bytes} bytes in memory)",
                          self.limits.retry_max_seconds)
                FULL.set(1)
            self.full = str(exc)
        elif isinstance(exc, StoreMisconfigured):
            self._backoff = self.limits.retry_max_seconds
            if self.misconfigured != str(exc):
                self.misconfigured = str(exc)
                log.error("store %s is misconfigured: %s. Writes are kept (spilled to %s "
                          "beyond %d bytes in memory) and retried every %.0f s.",
                          self.store.describe(), exc, self.limits.spill_dir,
                          self.limits.memory_bytes, self.limits.retry_max_seconds)
        elif not self._failing:
            log.warning("store %s failing: %s; pausing writes (%d waiting)",
                        self.store.describe(), exc, self.pending_objects)
        if not self._failing:
            self._failing = True
            HEALTHY.set(0)

    async def _probe(self) -> None:
        delay = self._backoff
        self._backoff = min(delay * 2, self.limits.retry_max_seconds)
        await asyncio.sleep(delay)
        try:
            await self.store.check()
        except StoreError as exc:
            self.failures += 1
            self._note_error(exc)
        except Exception as exc:
            self.failures += 1
            log.exception("store %s: check failed unexpectedly", self.store.describe())
            self._note_error(exc)
        else:
            self._failing = False
            HEALTHY.set(1)
            log.info("store %s answers again; sending %d waiting objects",
                     self.store.describe(), self.pending_objects)

    # --- spilling ---------------------------------------------------------------------
    def _spill_now(self, e: _Entry) -> bool:
        """Write `e` to disk on the spot (one small file in the page cache); False if the
        disk refuses, and `e` must stay in memory."""
        assert e.data is not None
        if self._spill_blocked:
            return False
        try:
            e.spill = self._spill.write(e.key, e.data, e.cache_control)
        except OSError as exc:
            if not self._spill_broken:
                log.error("cannot spill to %s (%s): keeping objects in memory beyond the "
                          "bound", self.limits.spill_dir, exc)
            self._spill_broken = True
            return False
        self._spill_broken = False
        self._spilled_objects += 1
        self._spilled_bytes += e.size
        WRITES.labels("spilled").inc()
        return True

    def _write_ahead(self, e: _Entry) -> None:
        """Append a durable entry to the journal; its data stays in memory for the upload.
        Where the disk refuses, the entry goes on in memory alone (as every object did
        before the journal), said once."""
        assert e.data is not None
        if self._spill_blocked:
            return
        if self._journal.disk_bytes > self._journal_bound:
            if not self._journal_over:
                self._journal_over = True
                log.error("write-ahead journal %s holds %d bytes, over its bound of %d: parts "
                          "are not written ahead until the store takes what holds it",
                          self._journal.root, self._journal.disk_bytes, self._journal_bound)
            return
        if self._journal_over:
            self._journal_over = False
            log.warning("write-ahead journal %s is back under its bound: parts are written "
                        "ahead again", self._journal.root)
        try:
            e.journal = self._journal.append(e.key, e.data, e.cache_control)
        except OSError as exc:
            if not self._journal_broken:
                self._journal_broken = True
                log.error("cannot write ahead to %s (%s): a crash now loses the parts on "
                          "their way to the store", self._journal.root, exc)
            return
        if self._journal_broken:
            self._journal_broken = False
            log.warning("parts are written ahead to %s again", self._journal.root)

    async def _spill_unstored(self, upto: int | None) -> None:
        """Spill every unstored entry put up to `upto` (all if None) not yet on disk."""
        entries = [e for e in itertools.chain(self._waiting.values(), self._sending.values())
                   if e.spill is None and e.data is not None
                   and (upto is None or e.first_seq <= upto)]
        if not entries:
            return
        batch = [(e.key, e.data or b"", e.cache_control) for e in entries]
        results = await asyncio.get_running_loop().run_in_executor(
            self._io, _write_all, self._spill, batch)
        for e, spilled in zip(entries, results):
            if isinstance(spilled, OSError):
                log.error("cannot spill %s to %s: %s; it is lost if the process ends now",
                          e.key, self.limits.spill_dir, spilled)
                continue
            if e.state is _State.DONE or e.spill is not None:
                self._spill.remove(spilled)  # stored or spilled meanwhile
                continue
            e.spill = spilled
            self._spilled_objects += 1
            self._spilled_bytes += e.size
            WRITES.labels("spilled").inc()
            if e.state is _State.WAITING:
                self._release(e)
        self._publish()

    def _spill_after_close(self, key: str, data: bytes, cache_control: str) -> None:
        log.warning("store writer closed: %s goes straight to %s", key, self.limits.spill_dir)
        try:
            self._spill.write(key, data, cache_control)
            WRITES.labels("spilled").inc()
        except OSError as exc:
            log.error("cannot spill %s after close: %s; it is lost", key, exc)

    async def _recover(self) -> None:
        """Queue what an earlier run left on disk: the oldest backlog, behind live objects."""
        try:
            found = await asyncio.get_running_loop().run_in_executor(self._io, self._scan)
        except OSError as exc:
            log.error("cannot read spill folder %s: %s", self.limits.spill_dir, exc)
            found = []
        finally:
            seen, self._recovering = self._recovering or set(), None
        ours = {e.spill.path for e in itertools.chain(self._waiting.values(),
                                                      self._sending.values()) if e.spill}
        stale = [s for s in found if s.path not in ours and s.key in seen]
        queued = [s for s in found if s.path not in ours and s.key not in seen]
        for s in stale:  # this run has already put a newer version
            self._spill.remove(s)
        by_key = {s.key: s for s in queued}  # a key spilled twice: the newer file wins
        for s in queued:
            if by_key[s.key] is not s:
                self._spill.remove(s)
        keep = list(by_key.values())
        keep.sort(key=lambda s: s.path.name)
        for i, s in enumerate(keep):
            seq = i - len(keep)  # before anything this run puts
            e = _Entry(s.key, s.cache_control, s.size, seq, seq, False, time.monotonic(),
                       None, s)
            self._waiting[s.key] = e
            heapq.heappush(self._unstored, (seq, next(self._tiebreak), e))
            self._enqueue(e)
            self._spilled_objects += 1
            self._spilled_bytes += s.size
        if keep:
            log.warning("store %s: %d objects (%d bytes) spilled by an earlier run are queued "
                        "for upload", self.store.describe(), len(keep),
                        sum(s.size for s in keep))
        self._publish()
        self._wake.set()

    def _scan(self) -> list[SpilledObject]:
        """What an earlier run left: its journal's undone objects, moved into the spill
        folder, and everything there (on the writer's thread)."""
        moved = self._journal.recover(self._spill)
        if moved:
            log.warning("store %s: %d objects in the journal of a run that ended without "
                        "storing them (a crash) are queued for upload", self.store.describe(),
                        moved)
        return self._spill.scan()

    # --- metrics ----------------------------------------------------------------------
    def _publish(self) -> None:
        now = ((0, 0, 0, 0, 0, 0) if self._closed else
               (self.pending_objects, self._memory, self._spilled_objects, self._spilled_bytes,
                self._journal.pending, self._journal.disk_bytes))
        for gauge, new, old in zip((PENDING, PENDING_BYTES, SPILLED, SPILLED_BYTES, JOURNALED,
                                    JOURNAL_BYTES), now, self._published):
            if new != old:
                gauge.inc(new - old)
        self._published = now


def _write_all(folder: SpillFolder,
               batch: list[tuple[str, bytes, str]]) -> list[SpilledObject | OSError]:
    out: list[SpilledObject | OSError] = []
    for key, data, cache_control in batch:
        try:
            out.append(folder.write(key, data, cache_control))
        except OSError as exc:
            out.append(exc)
    return out


def _is_part(key: str) -> bool:
    """Whether a store key names a part (`live/{room}/{rendition}/{epoch}/p{msn}.{i}.m4s`)."""
    name = parse_object(key.removeprefix(LIVE_ROOT + "/"))
    return name is not None and name.kind == "part"


def _remaining(loop: asyncio.AbstractEventLoop, end: float) -> float | None:
    return None if math.isinf(end) else end - loop.time()
