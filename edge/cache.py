"""The coalescing cache: one upstream request per key in flight, however many clients wait."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from edge.breaker import CircuitBreaker
from edge.entry import Entry, build_fields, max_age
from edge.errors import UpstreamError, UpstreamTimeout
from edge.lru import ByteLRU
from edge.metrics import EdgeMetrics
from edge.settings import EdgeSettings
from edge.targets import Target
from edge.upstream import Upstream, UpstreamResponse
from hls.http import default_lifetime
from hls.reach import PlaylistPosition, parse_position

Deliver = Callable[[Entry], None]
EXTRA_HEADERS = (("date", b"Date"), ("etag", b"ETag"), ("last-modified", b"Last-Modified"),
                 ("retry-after", b"Retry-After"))
# Lifetime of a last good playlist served while the upstream is failing.
STALE_PLAYLIST_SECONDS = 1


def edge_error(status: int, message: str, retry_after: int | None = None) -> Entry:
    """An answer made up by the edge (400, 503): never cached by anyone."""
    extra = [(b"Retry-After", b"%d" % retry_after)] if retry_after is not None else []
    fields = build_fields("other", b"text/plain; charset=utf-8", b"no-store", extra)
    return Entry(status, "other", message.encode() + b"\n", fields, 0.0, 0.0, aged=False)


OVERLOADED = edge_error(503, "edge overloaded: too many waiting requests", retry_after=1)


class PinnedPlaylist:
    """The newest copy of one live playlist, kept outside the LRU.

    It answers blocking requests locally and is the last good copy served while the upstream fails.
    """

    __slots__ = ("full", "full_pos", "delta", "delta_pos", "touched", "reach", "reach_born")

    def __init__(self) -> None:
        self.full: Entry | None = None
        self.full_pos: PlaylistPosition | None = None
        self.delta: Entry | None = None
        self.delta_pos: PlaylistPosition | None = None
        self.touched = 0.0
        # The furthest position any held copy (full or delta) reached, and when that copy
        # was made: far-future checks must measure against the newest knowledge we have.
        self.reach: PlaylistPosition | None = None
        self.reach_born = 0.0

    def update(self, entry: Entry, pos: PlaylistPosition | None, now: float) -> bool:
        """Keep `entry` if it reaches further than what is held; True if it was kept."""
        self.touched = now
        if pos is not None and (self.reach is None or not self.reach.newer_than(pos)):
            self.reach, self.reach_born = pos, now
        if pos is not None and pos.delta:
            if self.delta_pos is None or not self.delta_pos.newer_than(pos):
                self.delta, self.delta_pos = entry, pos
                return True
            return False
        if self.full_pos is None or pos is None or not self.full_pos.newer_than(pos):
            self.full, self.full_pos = entry, pos
            return True
        return False

    def answer(self, t: Target, blocking_max_age: int) -> Entry | None:
        """A held playlist containing what `t` asks for, if any (full playlists serve skips too)."""
        assert t.msn is not None
        if t.skip is not None and self.delta is not None and self.delta_pos is not None:
            if self.delta_pos.contains(t.msn, t.part) and (
                self.full_pos is None or not self.full_pos.newer_than(self.delta_pos)
            ):
                return self.delta.relabelled(blocking_max_age)
        if self.full is not None and self.full_pos is not None:
            if self.full_pos.contains(t.msn, t.part):
                return self.full.relabelled(blocking_max_age)
        return None

    def last_good(self, t: Target) -> Entry | None:
        if t.skip is not None and self.delta is not None:
            return self.delta
        return self.full

    @property
    def size(self) -> int:
        return (self.full.size if self.full else 0) + (self.delta.size if self.delta else 0)


class Flight:
    """One upstream request in flight and the clients waiting for its answer."""

    __slots__ = ("target", "waiters")

    def __init__(self, target: Target, first: Deliver) -> None:
        self.target = target
        self.waiters = [first]


class CoalescingCache:
    """Cache lookups, local answers to blocking requests, and coalesced upstream fetches."""

    def __init__(self, settings: EdgeSettings, upstream: Upstream, metrics: EdgeMetrics) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.lru = ByteLRU(settings.edge_cache_bytes)
        self.pinned: dict[str, PinnedPlaylist] = {}
        self.flights: dict[str, Flight] = {}
        self._blocking: dict[str, set[Flight]] = {}
        self.waiting = 0
        self.breaker = CircuitBreaker(
            settings.edge_breaker_failures,
            settings.edge_breaker_backoff_min,
            settings.edge_breaker_backoff_max,
        )
        self.td = settings.edge_target_duration
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups (synchronous, the hot path) ------------------------------------------------

    def lookup(self, t: Target, now: float) -> Entry | None:
        """A fresh cached answer, or a local answer to a blocking request; None on a miss."""
        entry = self.lru.get(t.key)
        if entry is not None and now < entry.expires:
            self.metrics.hits[t.kind] += 1
            return entry
        if t.msn is not None:
            pinned = self.pinned.get(t.path)
            if pinned is not None:
                local = pinned.answer(t, int(6 * self.td))
                if local is not None:
                    self.metrics.local_answers += 1
                    self.metrics.hits[t.kind] += 1
                    return local
                pos = pinned.reach
                # Refuse far-future requests here, allowing for how far the live edge may have
                # moved since our copy was made (players add segments for a CDN's Age).
                slack = 1 + int((now - pinned.reach_born) / self.td)
                if pos is not None and pos.too_far(t.msn, slack):
                    return edge_error(400, f"_HLS_msn={t.msn} is too far ahead of the live edge")
        return None

    # -- misses ------------------------------------------------------------------------------

    def fetch(self, t: Target, deliver: Deliver) -> None:
        """Deliver an answer for `t` later: join the flight for its key or start one."""
        if self.waiting >= self.settings.edge_max_waiters:
            self.metrics.rejected["waiters"] += 1
            deliver(OVERLOADED)
            return
        flight = self.flights.get(t.key)
        if flight is not None:
            flight.waiters.append(deliver)
            self.waiting += 1
            self.metrics.coalesced[t.kind] += 1
            return
        self.metrics.misses[t.kind] += 1
        if not self.breaker.allow():
            self.metrics.upstream[(t.kind, "circuit_open")] += 1
            deliver(self._fallback(t))
            return
        flight = Flight(t, deliver)
        self.waiting += 1
        self.flights[t.key] = flight
        if t.msn is not None:
            self._blocking.setdefault(t.path, set()).add(flight)
        task = asyncio.get_running_loop().create_task(self._run(flight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, flight: Flight) -> None:
        t = flight.target
        entry: Entry
        try:
            try:
                r = await self.upstream.fetch(t.key)
            except UpstreamError as exc:
                outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "error"
                self.metrics.upstream[(t.kind, outcome)] += 1
                self.breaker.failure()
                entry = self._fallback(t)
            else:
                self.metrics.upstream[(t.kind, str(r.status))] += 1
                # A blocking request the origin gave up on (503) is the stream stalling, not
                # the origin failing: pass it on, do not trip the breaker.
                if r.status >= 500 and not (r.status == 503 and t.msn is not None):
                    self.breaker.failure()
                    entry = self._fallback(t, self._entry(t, r))
                else:
                    self.breaker.success()
                    self._detach(flight)  # its own waiters get this answer, not a local copy
                    entry = self._store(t, r)
        except Exception:  # never leave waiters hanging, whatever went wrong
            entry = edge_error(502, "edge failed to relay the upstream answer")
            self._finish(flight, entry)
            raise
        self._finish(flight, entry)

    def _detach(self, flight: Flight) -> None:
        t = flight.target
        if self.flights.get(t.key) is flight:
            del self.flights[t.key]
        if t.msn is not None:
            group = self._blocking.get(t.path)
            if group is not None:
                group.discard(flight)
                if not group:
                    del self._blocking[t.path]

    def _finish(self, flight: Flight, entry: Entry) -> None:
        self._detach(flight)
        waiters, flight.waiters = flight.waiters, []
        self.waiting -= len(waiters)
        start = time.perf_counter()
        for deliver in waiters:
            deliver(entry)
        if len(waiters) > 1:
            self.metrics.last_fanout = (len(waiters), time.perf_counter() - start)

    def _entry(self, t: Target, r: UpstreamResponse) -> Entry:
        now = time.monotonic()
        try:
            age = max(0.0, float(r.headers.get("age", "0")))
        except ValueError:
            age = 0.0
        cc = r.headers.get("cache-control")
        lifetime = max_age(cc.encode()) if cc else None
        if lifetime is None:
            lifetime = default_lifetime(t.kind, r.status, self.td)
        cache_control = cc.encode() if cc else b"max-age=%d" % math.ceil(lifetime)
        extra = [(name, r.headers[key].encode()) for key, name in EXTRA_HEADERS
                 if key in r.headers]
        ctype = r.headers.get("content-type")
        fields = build_fields(t.kind, ctype.encode() if ctype else None, cache_control, extra)
        return Entry(r.status, t.kind, r.body, fields, now - age, lifetime)

    def _store(self, t: Target, r: UpstreamResponse) -> Entry:
        entry = self._entry(t, r)
        if entry.expires > entry.born:
            self.lru.put(t.key, entry)
        if entry.status == 200 and t.is_playlist:
            self._pin(t, entry)
        return entry

    def _pin(self, t: Target, entry: Entry) -> None:
        pos = parse_position(entry.body) if t.kind != "master" else None
        pinned = self.pinned.get(t.path)
        if pinned is None:
            pinned = self.pinned[t.path] = PinnedPlaylist()
        if not pinned.update(entry, pos, entry.born) or pos is None:
            return
        if pos.target_duration > 0:
            self.td = pos.target_duration
        group = self._blocking.get(t.path)
        if group:
            self._release(pinned, group)

    def _release(self, pinned: PinnedPlaylist, group: set[Flight]) -> None:
        """Answer blocking requests that a newer playlist satisfies before their own answer comes."""
        for flight in group:
            if not flight.waiters:
                continue
            local = pinned.answer(flight.target, int(6 * self.td))
            if local is not None:
                waiters, flight.waiters = flight.waiters, []
                self.waiting -= len(waiters)
                self.metrics.local_answers += len(waiters)
                for deliver in waiters:
                    deliver(local)

    def _fallback(self, t: Target, failed: Entry | None = None) -> Entry:
        """What to answer when the upstream failed: a stale copy, else the failure, else 503."""
        stale = self.lru.peek(t.key)
        if stale is not None and stale.status < 400 and not (t.is_playlist and t.msn is not None):
            self.metrics.stale[t.kind] += 1
            return stale.relabelled(STALE_PLAYLIST_SECONDS) if t.is_playlist else stale
        if t.is_playlist:
            pinned = self.pinned.get(t.path)
            last = pinned.last_good(t) if pinned is not None else None
            if last is not None:
                self.metrics.stale[t.kind] += 1
                return last.relabelled(STALE_PLAYLIST_SECONDS)
        if failed is not None:
            return failed
        retry = max(1, math.ceil(self.breaker.retry_after()))
        return edge_error(503, "upstream unavailable", retry_after=retry)

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Forget pinned playlists of rooms that stopped updating."""
        limit = self.settings.edge_pin_seconds
        for path in [p for p, pin in self.pinned.items() if now - pin.touched > limit]:
            del self.pinned[path]

    def pinned_bytes(self) -> int:
        return sum(p.size for p in self.pinned.values())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.upstream.aclose()
