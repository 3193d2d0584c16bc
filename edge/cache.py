"""The coalescing cache: one upstream request per key in flight, however many clients wait.

Isolation between rooms: failures are counted per room (`BreakerTable`), a room may hold at
most `edge_room_flights` upstream requests at once, and negative answers live in their own
small LRU. Requests that cannot name anything real (a part index no segment holds, a segment
far beyond the live edge of the rendition's current epoch) are refused from what the pinned
playlists say, without an upstream request.

An upstream that fails is answered around with a stale copy where one is fit to answer (a
plain playlist, an object cached before). A request with no such copy (the blocking reload
and the hinted part that every listener has out at any moment, an object never cached) is not
failed at once: its flight tries the upstream again, backing off and waiting on the room's
breaker, for up to three target durations from when it started (as long as an origin may hold
a blocking request anyway, and well within hls.js's 10 s to a first byte), then answers as
before. An origin restarting within that time (a deploy, a crashed ingest that comes back
and resumes its rooms) looks to players like parts arriving late. A quick 503 sent each of
them into its own retry backoff instead: hls.js's defaults wait 1, 2, 4, then 8 s between
tries, so a room back just after a try was heard only at the next one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from edge.breaker import BreakerTable
from edge.entry import Entry, build_fields, max_age, without_fields
from edge.errors import UpstreamBusy, UpstreamError, UpstreamTimeout
from edge.lru import ByteLRU
from edge.metrics import EdgeMetrics
from edge.pinned import PinnedPlaylist, PinnedPlaylists
from edge.settings import EdgeSettings
from edge.targets import Target
from edge.upstream import Upstream, UpstreamResponse
from hls.delta import expand_delta
from hls.http import REFUSED, asked_again, default_lifetime, playlist_lifetime
from hls.reach import (
    PlaylistPosition,
    parse_position,
    part_object_too_far,
    part_too_far,
    segments_since,
)

Deliver = Callable[[Entry], None]
# Headers to add to a room's upstream playlist requests: the edge's audience report.
Report = Callable[[str], dict[str, str]]
# Kinds whose upstream requests carry the report (media playlists, plain or blocking).
REPORTED_KINDS = frozenset({"playlist", "blocking_playlist"})
EXTRA_HEADERS = (("date", b"Date"), ("etag", b"ETag"), ("last-modified", b"Last-Modified"),
                 ("retry-after", b"Retry-After"))


def edge_error(status: int, message: str, retry_after: int | None = None) -> Entry:
    """An answer made up by the edge (400, 503): never cached by anyone."""
    extra = [(b"Retry-After", b"%d" % retry_after)] if retry_after is not None else []
    fields = build_fields("other", b"text/plain; charset=utf-8", b"no-store", extra)
    return Entry(status, "other", message.encode() + b"\n", fields, 0.0, 0.0, aged=False)


def edge_refusal(status: int, message: str) -> Entry:
    """A refusal made up by the edge for a name that may become real later: briefly cacheable
    downstream (the origin's lifetime for the same refusal)."""
    fields = build_fields("other", b"text/plain; charset=utf-8", REFUSED.encode(), [])
    return Entry(status, "other", message.encode() + b"\n", fields, 0.0, 0.0, aged=False)


OVERLOADED = edge_error(503, "edge overloaded: too many waiting requests", retry_after=1)
ROOM_BUSY = edge_error(503, "too many upstream requests for this room", retry_after=1)
POOL_BUSY = edge_error(503, "edge busy: no upstream connection came free", retry_after=1)
# What `_ask` returns for an upstream that said nothing (refused, reset, timed out).
UPSTREAM_FAILED = edge_error(503, "upstream unavailable")
NOT_FOUND = edge_refusal(404, "not found")
PART_TOO_FAR = edge_refusal(404, "no segment holds a part with that index")
MEDIA_TOO_FAR = edge_refusal(404, "that segment is beyond the live edge")
# A flight whose upstream failed tries again after this long, doubling up to RETRY_MAX.
RETRY_FIRST = 0.25
RETRY_MAX = 1.0


class Flight:
    """One upstream request in flight and the clients waiting for its answer."""

    __slots__ = ("target", "waiters", "satisfied", "deadline", "waited")

    def __init__(self, target: Target, first: Deliver, satisfied: bool, deadline: float) -> None:
        self.target = target
        self.waiters = [first]
        # A blocking request that a held (but too old) playlist already satisfies.
        self.satisfied = satisfied
        # Until when it tries the upstream again when it fails (no stale copy to answer with).
        self.deadline = deadline
        self.waited = False  # whether it has waited out a failure


class CoalescingCache:
    """Cache lookups, local answers to blocking requests, and coalesced upstream fetches."""

    def __init__(self, settings: EdgeSettings, upstream: Upstream, metrics: EdgeMetrics,
                 report: Report | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.report = report
        negative = min(settings.edge_negative_cache_bytes, settings.edge_cache_bytes // 8)
        self.negative = ByteLRU(negative)
        self.lru = ByteLRU(settings.edge_cache_bytes - negative)
        self.pins = PinnedPlaylists(self.lru, self.lru.max_bytes // 2)
        self.flights: dict[str, Flight] = {}
        self.room_flights: defaultdict[str, int] = defaultdict(int)
        self._blocking: dict[str, set[Flight]] = {}
        self.waiting = 0
        self.breakers = BreakerTable(
            settings.edge_breaker_failures,
            settings.edge_breaker_backoff_min,
            settings.edge_breaker_backoff_max,
            settings.edge_breaker_rooms,
        )
        self.td = settings.edge_target_duration
        # How long a flight rides out a failing upstream: the hold a blocking request has anyway.
        self.hold = 3 * self.td
        self.holding = 0  # flights waiting to try a failed upstream again
        # Lifetime of an answer to a blocking request that was already satisfied when it came:
        # at most one part target (whole seconds: 0 for sub-second parts), and only copies
        # young enough that their Age stays within it are served.
        self.satisfied_max_age = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lookups (synchronous, the hot path) ------------------------------------------------

    def lookup(self, t: Target, now: float) -> Entry | None:
        """A fresh cached answer, a local answer or refusal; None when upstream must answer."""
        if t.msn is not None:
            return self._lookup_blocking(t, now)
        entry = self.lru.get(t.key)
        if entry is not None and now < entry.expires:
            if t.kind == "playlist":
                entry = self._newest_plain(t, entry)
            self.metrics.hits[t.kind] += 1
            return entry
        entry = self.negative.get(t.key)
        if entry is not None and now < entry.expires:
            self.metrics.negative_hits[t.kind] += 1
            return entry
        if t.live_path is not None:
            return self._refuse_media(t, now)
        return None

    def _newest_plain(self, t: Target, cached: Entry) -> Entry:
        """A fresh plain live playlist answered from the newest full copy held.

        A joining player takes its start position from the newest part it is shown, counting
        the playlist's age from when it arrived; `Age` is whole seconds, so a cached copy a
        fraction of a second old starts it that much further from live, for good. So once
        blocking answers have brought a newer full playlist, the plain answer is that copy
        (its own age, the plain lifetime). Delta updates count too: `_fill_in` rebuilds the
        full playlist each one stands for.

        Never upstream while the cached copy is fresh: asking again whenever delta answers
        had gone further cost the origin one request a part and rendition for as long as
        players kept joining, so a join storm or a crowd falling behind made the origin's
        load grow with the audience."""
        pinned = self.pins.get(t.path)
        if pinned is None or pinned.ended:
            return cached
        newest = pinned.full
        if newest is None or newest is cached or newest.born < cached.born:
            return cached
        self.metrics.plain_refreshed += 1
        return newest.relabelled(round(cached.expires - cached.born))

    def _lookup_blocking(self, t: Target, now: float) -> Entry | None:
        assert t.msn is not None
        pinned = self.pins.get(t.path)
        if pinned is not None:
            # A part index no segment can hold is refused first, as the origin does, even
            # for a segment already complete (whose copy would otherwise answer it).
            impossible = self._impossible_part(t, pinned)
            if impossible is not None:
                return impossible
            held = pinned.answer(t)
            if held is not None:
                if pinned.ended:
                    return held if now < held.expires else None
                if now - held.born < self.satisfied_max_age + 1:
                    self.metrics.local_answers += 1
                    self.metrics.hits[t.kind] += 1
                    return held.relabelled(self.satisfied_max_age)
                return None  # too old to serve: the upstream has a newer one at once
            refusal = self._refuse_blocking(t, pinned, now)
            if refusal is not None:
                return refusal
        entry = self.negative.get(t.key)
        if entry is not None and now < entry.expires:
            self.metrics.negative_hits[t.kind] += 1
            return entry
        return None

    def _slack(self, pinned: PinnedPlaylist, now: float) -> int:
        # Allow for how far the live edge may have moved since our copy was made (players
        # add segments for a CDN's Age).
        assert pinned.reach is not None
        return 1 + segments_since(now - pinned.reach_born, pinned.reach.target_duration)

    def _refuse_blocking(self, t: Target, pinned: PinnedPlaylist, now: float) -> Entry | None:
        pos = pinned.reach
        if pos is None or t.msn is None:
            return None
        if pos.too_far(t.msn, self._slack(pinned, now)):
            self.metrics.refused["msn_ahead"] += 1
            return edge_error(400, f"_HLS_msn={t.msn} is too far ahead of the live edge")
        return None

    def _impossible_part(self, t: Target, pinned: PinnedPlaylist) -> Entry | None:
        pos = pinned.reach
        if t.part is not None and pos is not None and pinned.part_target > 0 \
                and pos.target_duration > 0 \
                and part_too_far(t.part, pos.target_duration, pinned.part_target):
            self.metrics.refused["part_index"] += 1
            return edge_error(400, f"_HLS_part={t.part} is beyond what a segment holds")
        return None

    def _refuse_media(self, t: Target, now: float) -> Entry | None:
        """Refuse a part or segment no playlist of its rendition can ever list."""
        assert t.live_path is not None
        pinned = self.pins.get(t.live_path)
        if pinned is None or pinned.reach is None:
            return None
        pos = pinned.reach
        if t.media_part is not None and pinned.part_target > 0 and pos.target_duration > 0 \
                and part_object_too_far(t.media_part, pos.target_duration, pinned.part_target):
            self.metrics.refused["part_index"] += 1
            return PART_TOO_FAR
        if (t.media_msn is not None and t.epoch == pinned.epoch
                and pos.too_far(t.media_msn, self._slack(pinned, now))):
            self.metrics.refused["msn_ahead"] += 1
            return MEDIA_TOO_FAR
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
        room = t.room
        if self.room_flights[room] >= self.settings.edge_room_flights:
            self.metrics.rejected["room_flights"] += 1
            deliver(self._fallback(t, ROOM_BUSY))
            return
        allowed = self.breakers.allow(room)
        if not allowed:
            self.metrics.upstream[(t.kind, "circuit_open")] += 1
            stale = self._stale(t)
            if stale is not None:
                deliver(stale)
                return
            # Nothing to answer with yet: the flight waits for the circuit (see the docstring).
        satisfied = False
        if t.msn is not None:
            pinned = self.pins.get(t.path)
            satisfied = pinned is not None and pinned.answer(t) is not None
        flight = Flight(t, deliver, satisfied, time.monotonic() + self.hold)
        self.waiting += 1
        self.room_flights[room] += 1
        self.flights[t.key] = flight
        if t.msn is not None:
            self._blocking.setdefault(t.path, set()).add(flight)
        task = asyncio.get_running_loop().create_task(self._run(flight, allowed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, flight: Flight, allowed: bool) -> None:
        t = flight.target
        room = t.room
        entry: Entry
        try:
            pause = RETRY_FIRST
            failed = True
            entry = UPSTREAM_FAILED
            while flight.waiters:
                if not allowed and not await self._circuit_allows(flight):
                    break
                failed, entry = await self._ask(flight)
                if not failed:
                    break
                stale = self._stale(t)
                if stale is not None:
                    failed, entry = False, stale
                    break
                wait = min(pause, flight.deadline - time.monotonic())
                if wait <= 0:
                    break
                flight.waited = True
                self.holding += 1
                try:
                    await asyncio.sleep(wait)
                finally:
                    self.holding -= 1
                pause = min(2 * pause, RETRY_MAX)
                allowed = False
            if failed and flight.waiters:  # (none left: a newer playlist answered them)
                if flight.waited:
                    self.metrics.outage_holds[(t.kind, "gave_up")] += 1
                entry = self._fallback(t, entry)
        except Exception:  # never leave waiters hanging, whatever went wrong
            entry = edge_error(502, "edge failed to relay the upstream answer")
            self._finish(flight, entry)
            raise
        finally:
            left = self.room_flights[room] - 1
            if left > 0:
                self.room_flights[room] = left
            else:
                del self.room_flights[room]
        self._finish(flight, entry)

    async def _ask(self, flight: Flight) -> tuple[bool, Entry]:
        """One upstream request for the flight: (whether the upstream failed, the answer, or
        on a failure what it said, if anything worth passing on)."""
        t = flight.target
        room = t.room
        try:
            report = self.report
            headers = report(room) if report is not None and t.kind in REPORTED_KINDS else None
            r = await self.upstream.fetch(t.key, headers)
        except UpstreamBusy:
            self.metrics.upstream[(t.kind, "pool_busy")] += 1
            self.breakers.inconclusive(room)  # our congestion says nothing of the room
            return False, self._fallback(t, POOL_BUSY)
        except UpstreamError as exc:
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "error"
            self.metrics.upstream[(t.kind, outcome)] += 1
            self.breakers.failure(room)
            return True, UPSTREAM_FAILED
        self.metrics.upstream[(t.kind, str(r.status))] += 1
        if r.status >= 500 and not _stalled(t, r.status):
            self.breakers.failure(room)
            return True, self._entry(t, r)
        # A held request the origin gave up on (503: the part never came) is the stream
        # stalling, not the upstream failing: it answered, so it is alive.
        self.breakers.success(room)
        if flight.waited:
            self.metrics.outage_holds[(t.kind, "answered")] += 1
        self._detach(flight)  # its own waiters get this answer, not a local copy
        entry = self._store(t, r)
        if flight.satisfied and entry.status == 200 and entry.expires - entry.born \
                > self.satisfied_max_age and not _final(entry):
            entry = entry.relabelled(self.satisfied_max_age)
        return False, entry

    async def _circuit_allows(self, flight: Flight) -> bool:
        """Wait until the room's breaker lets the flight ask (a probe's turn, or closed
        again); False once its hold runs out or nobody waits for it any more."""
        room = flight.target.room
        self.holding += 1
        try:
            while flight.waiters:
                if self.breakers.allow(room):
                    return True
                left = flight.deadline - time.monotonic()
                if left <= 0:
                    return False
                flight.waited = True
                # Another flight may hold the probe: look again soon, whatever the backoff.
                await asyncio.sleep(min(max(self.breakers.retry_after(room), 0.05), RETRY_MAX,
                                        left))
            return False
        finally:
            self.holding -= 1

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

    def _entry(self, t: Target, r: UpstreamResponse, cap: float | None = None) -> Entry:
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
        if cap is not None:
            lifetime = min(lifetime, cap)
        extra = [(name, r.headers[key].encode()) for key, name in EXTRA_HEADERS
                 if key in r.headers]
        ctype = r.headers.get("content-type")
        fields = build_fields(t.kind, ctype.encode() if ctype else None, cache_control, extra)
        return Entry(r.status, t.kind, r.body, fields, now - age, lifetime)

    def _store(self, t: Target, r: UpstreamResponse) -> Entry:
        if r.status >= 400:
            entry = self._entry(t, r, self.settings.edge_negative_seconds)
            if entry.expires > entry.born:
                self.negative.put(t.key, entry)
            return entry
        entry = self._entry(t, r)
        # Blocking answers live in the pinned playlist: a later request for the same key
        # gets the newest copy, never this one again.
        if entry.expires > entry.born and t.msn is None:
            self.lru.put(t.key, entry)
        if entry.status == 200 and t.is_playlist:
            self._pin(t, entry)
        return entry

    def _pin(self, t: Target, entry: Entry) -> None:
        pos = parse_position(entry.body) if t.kind != "master" else None
        pinned = self.pins.update(t.path, entry, pos, entry.born)
        if pinned is None or pos is None:
            return
        if pos.delta:
            self._fill_in(t, pinned, entry, pos)
        if pos.target_duration > 0:
            self.td = pos.target_duration
        if pinned.part_target > 0:
            # The lifetime of a blocking answer whose URL is asked again (the shared rule).
            self.satisfied_max_age = playlist_lifetime(
                int(pos.target_duration), True, pinned.part_target, True)
        group = self._blocking.get(t.path)
        if group:
            self._release(pinned, group)

    def _fill_in(self, t: Target, pinned: PinnedPlaylist, delta: Entry,
                 pos: PlaylistPosition) -> None:
        """Pin the full playlist a delta update stands for, its skipped segments taken from
        the full copy held (`hls.delta`): a plain request is then answered as far as the
        newest part without asking upstream (players that skip bring only delta updates)."""
        full = pinned.full
        if full is None or (pinned.full_pos is not None and not pos.newer_than(pinned.full_pos)):
            return
        try:
            text = expand_delta(full.body.decode(), delta.body.decode())
        except UnicodeDecodeError:
            return  # not a playlist we can read: the copies held stand as they are
        if text is None:
            return
        # Entry adds its own Vary line to a playlist worth compressing.
        fields = without_fields(delta.fields, b"vary:")
        rebuilt = Entry(delta.status, delta.kind, text.encode(), fields, delta.born,
                        delta.expires - delta.born)
        if self.pins.update(t.path, rebuilt, replace(pos, delta=False), delta.born) is not None:
            self.metrics.playlists_rebuilt += 1

    def _release(self, pinned: PinnedPlaylist, group: set[Flight]) -> None:
        """Answer blocking requests that a newer playlist satisfies before their own answer comes."""
        # They waited for this very part, so their URL is not asked again (Appendix B: long),
        # unless the answer ends on a segment boundary, where video.js asks once more for the
        # part it just got: then as short as a satisfied request's (the shared rule).
        reach = pinned.reach
        again = reach is not None and asked_again(False, reach.part_msn > reach.last_msn)
        lifetime = self.satisfied_max_age if again else int(6 * self.td)
        for flight in group:
            if not flight.waiters:
                continue
            held = pinned.answer(flight.target)
            if held is not None:
                local = held if pinned.ended else held.relabelled(
                    self.satisfied_max_age if flight.satisfied else lifetime)
                waiters, flight.waiters = flight.waiters, []
                self.waiting -= len(waiters)
                self.metrics.local_answers += len(waiters)
                for deliver in waiters:
                    deliver(local)

    def _fallback(self, t: Target, failed: Entry | None = None) -> Entry:
        """What to answer when the upstream failed: a stale copy, else the failure, else 503."""
        stale = self._stale(t)
        if stale is not None:
            return stale
        if failed is not None and failed is not UPSTREAM_FAILED:
            return failed
        retry = max(1, math.ceil(self.breakers.retry_after(t.room)))
        return edge_error(503, "upstream unavailable", retry_after=retry)

    def _stale(self, t: Target) -> Entry | None:
        """A copy fit to answer `t` while the upstream fails, if one is held (and counted as
        served: the caller answers with it).

        A blocking request gets a stale playlist only if it holds the requested part: an old
        playlist that does not is no answer to it (players reject it).
        """
        pinned = self.pins.get(t.path) if t.is_playlist else None
        if pinned is not None:
            # A live media playlist: only a copy as new as any players were given. The copy
            # cached under a plain request's key may be from a listener's join, long ago;
            # hls.js, whose retries drop their directives, would jump back to it.
            last = pinned.answer(t) if t.msn is not None else pinned.current(t)
            stale = last.relabelled(None) if last is not None else None
        else:
            stale = self.lru.peek(t.key)
            if stale is None or stale.status >= 400 or t.msn is not None:
                return None
            if t.is_playlist:
                stale = stale.relabelled(None)
        if stale is not None:
            self.metrics.stale[t.kind] += 1
        return stale

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Forget pinned playlists of rooms that stopped updating."""
        self.pins.sweep(now, self.settings.edge_pin_seconds)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.upstream.aclose()


def _stalled(t: Target, status: int) -> bool:
    """A 503 to a held request (a blocking playlist, a hinted part): the stream stalled."""
    return status == 503 and (t.msn is not None or t.kind == "part")


def _final(entry: Entry) -> bool:
    return b"#EXT-X-ENDLIST" in entry.body
