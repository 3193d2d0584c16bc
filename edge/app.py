"""The edge application: routes a parsed request to the cache, a page or a probe."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources

from edge.access import PRIVATE_PREFIX_BYTES, PrivateAccess
from edge.cache import NOT_FOUND, CoalescingCache, edge_error
from edge.entry import Entry, local_response
from edge.listeners import ListenerEstimate
from edge.metrics import EdgeMetrics
from edge.protocol import EdgeProtocol
from edge.settings import EdgeSettings
from edge.targets import Target, parse_target
from edge.upstream import Upstream
from hls.audience import (
    AUDIENCE_HEADER,
    EDGE_HEADER,
    FRESH_SECONDS,
    ReportTable,
    clamp,
    parse_report,
)
from hls.directives import BadDirective
from hls.http import PREFLIGHT_HEADERS
from hls.tokens import KeyRing

_REFUSALS = {404: "path", 403: "private"}
LISTENED_KINDS = frozenset({"playlist", "blocking_playlist"})
# Raw request targets remembered with their parsed form; cleared when full so that
# random query strings cannot grow it without bound. Refusals are not remembered.
MAX_TARGETS = 8192
PREFLIGHT = "".join(f"{name}: {value}\r\n" for name, value in PREFLIGHT_HEADERS).encode()
STATIC_TYPES = {".js": b"text/javascript; charset=utf-8", ".html": b"text/html; charset=utf-8",
                ".css": b"text/css; charset=utf-8", ".LICENSE": b"text/plain; charset=utf-8",
                ".VERSION": b"text/plain; charset=utf-8"}


class EdgeApp:
    """Everything one edge process holds: cache, counters, listener estimate, connections."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics()
        self.upstream = Upstream(
            settings.edge_upstream,
            settings.edge_upstream_timeout,
            settings.edge_upstream_connect_timeout,
            settings.edge_upstream_connections,
        )
        self.cache = CoalescingCache(settings, self.upstream, self.metrics, self._report)
        self.access = PrivateAccess(KeyRing.parse(settings.listener_token_keys),
                                    settings.edge_token_skew_seconds,
                                    settings.edge_private_trust_tokenless)
        self.listeners = ListenerEstimate(settings.edge_listener_window)
        # The latest audience report of each child edge, per room (taken on a shield only).
        self.children = ReportTable(FRESH_SECONDS, settings.edge_report_rooms,
                                    settings.edge_report_children)
        self.accept_reports = settings.edge_accept_reports
        self.connections: set[EdgeProtocol] = set()
        self.clock = time.monotonic
        self.coarse_now = self.clock()
        self.targets: dict[bytes, Target] = {}
        self.too_many_connections = local_response(
            503, b"edge overloaded: too many connections\n", extra=b"Retry-After: 1\r\n",
            close=True)
        self.static = _load_static()
        self._register_gauges()

    def _register_gauges(self) -> None:
        m, c = self.metrics, self.cache
        m.gauges.update({
            "townsquare_edge_open_connections": ("Client connections open",
                                                 lambda: len(self.connections)),
            "townsquare_edge_waiters": ("Requests waiting on upstream answers", lambda: c.waiting),
            "townsquare_edge_upstream_in_flight": ("Upstream requests in flight",
                                                   lambda: len(c.flights)),
            "townsquare_edge_upstream_holding": (
                "Upstream requests waiting to try a failing upstream again", lambda: c.holding),
            "townsquare_edge_cache_bytes": ("Bytes held under the cache bound: LRU, pinned "
                                            "playlists and negative answers",
                                            lambda: c.lru.total + c.negative.bytes),
            "townsquare_edge_cache_limit_bytes": ("Cache bound",
                                                  lambda: c.lru.max_bytes + c.negative.max_bytes),
            "townsquare_edge_cache_entries": ("Entries in the LRU", lambda: len(c.lru)),
            "townsquare_edge_cache_evictions": ("Entries evicted so far",
                                                lambda: c.lru.evictions),
            "townsquare_edge_negative_cache_bytes": ("Bytes of cached negative answers",
                                                     lambda: c.negative.bytes),
            "townsquare_edge_negative_cache_entries": ("Negative answers cached",
                                                       lambda: len(c.negative)),
            "townsquare_edge_negative_cache_evictions": ("Negative answers evicted so far",
                                                         lambda: c.negative.evictions),
            "townsquare_edge_pinned_playlists": ("Live playlists pinned",
                                                 lambda: len(c.pins)),
            "townsquare_edge_pinned_bytes": ("Bytes of pinned playlists (within the bound)",
                                             lambda: c.pins.bytes),
            "townsquare_edge_breakers_open": ("Rooms whose upstream circuit is not closed",
                                              c.breakers.open_count),
            "townsquare_edge_breakers_tracked": ("Rooms with recent upstream failures",
                                                 lambda: len(c.breakers)),
            "townsquare_edge_breaker_trips": ("Times a room's circuit opened",
                                              lambda: c.breakers.trips),
            "townsquare_edge_rooms_in_flight": ("Rooms with upstream requests in flight",
                                                lambda: len(c.room_flights)),
            "townsquare_edge_child_report_rooms": ("Rooms with audience reports of child edges",
                                                   lambda: len(self.children)),
            "townsquare_edge_child_report_entries": ("Child edges' audience reports kept",
                                                     lambda: self.children.entries),
        })
        m.room_gauge = lambda: self.listeners.rooms(self.clock())
        m.audience_gauge = self._audiences

    # -- requests ------------------------------------------------------------------------------

    def handle(self, conn: EdgeProtocol, url: bytes, method: bytes, close: bool) -> None:
        head_only = method == b"HEAD"
        if method != b"GET" and not head_only:
            self._other_method(conn, method, close)
            return
        target = self.targets.get(url)
        if target is None:
            t = self._resolve(url)
            if t is None:
                self._local(conn, url, head_only, close)
                return
            if not isinstance(t, Target):
                self.metrics.refused[_REFUSALS.get(t.status, "malformed")] += 1
                self._send(conn, t, "other", None, head_only, close)
                return
            target = t
        now = self.clock()
        entry = self.cache.lookup(target, now)
        room = target.room if target.kind in LISTENED_KINDS else None
        if conn.child is not None and room is not None and self.accept_reports:
            self._child_report(conn, room, now)
            room = None  # a child edge asking: its listeners are in its report
        if entry is None:
            slot = conn.defer(head_only, close, target.kind, room)
            self.cache.fetch(target, slot.deliver)
            return
        if conn.queue or conn.write_paused:
            conn.defer(head_only, close, target.kind, room).deliver(entry)
            return
        data = entry.response(now, conn.gz, head_only, close)
        self.metrics.requests[(target.kind, entry.status)] += 1
        if room is not None and entry.status == 200:
            self.listeners.seen(room, conn.client_id(), now)
        conn.respond(data, close)

    def _send(self, conn: EdgeProtocol, entry: Entry, kind: str, room: str | None,
              head_only: bool, close: bool) -> None:
        conn.defer(head_only, close, kind, room).deliver(entry)

    def _resolve(self, url: bytes) -> Target | Entry | None:
        """Parse a /live/ target (memoised) or None for the edge's own routes; a target that
        names nothing listeners may ask for becomes the edge's own refusal."""
        if url.startswith(PRIVATE_PREFIX_BYTES):
            # Never memoised: a token that is good now expires later.
            return self.access.resolve(url, time.time())
        if not url.startswith(b"/live/"):
            return None
        raw = url.decode("latin-1")
        parsed: Target | Entry
        try:
            target = parse_target(raw)
            parsed = target if target.public else NOT_FOUND
        except BadDirective as exc:
            parsed = edge_error(400, str(exc))
        if parsed.__class__ is Target:  # refusals are cheap to redo: junk must not churn it
            if len(self.targets) >= MAX_TARGETS:
                self.targets.clear()
            self.targets[url] = parsed
        return parsed

    def _other_method(self, conn: EdgeProtocol, method: bytes, close: bool) -> None:
        if method == b"OPTIONS":
            self.metrics.requests[("other", 204)] += 1
            conn.respond(local_response(204, b"", extra=PREFLIGHT, close=close), close)
            return
        self.metrics.requests[("other", 405)] += 1
        conn.respond(local_response(405, b"method not allowed\n",
                                    extra=b"Allow: GET, HEAD, OPTIONS\r\n", close=close), close)

    def _local(self, conn: EdgeProtocol, url: bytes, head_only: bool, close: bool) -> None:
        path = url.split(b"?", 1)[0].decode("latin-1")
        status, body, ctype, cc = 200, b"", b"text/plain; charset=utf-8", b"no-store"
        if path == "/healthz":
            body = b"ok\n"
        elif path == "/metrics":
            body = self.metrics.render()
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
        elif path == "/" or (path.startswith("/listen/") and path.count("/") == 2
                             and len(path) > 8):
            body = self.static["rooms.html" if path == "/" else "listen.html"]
            ctype, cc = b"text/html; charset=utf-8", b"max-age=60"
        elif path.startswith("/api/listeners/") and path.count("/") == 3:
            room = path.rsplit("/", 1)[1]
            now = self.clock()
            own, reported = self.listeners.estimate(room, now), self.children.total(room, now)
            body = json.dumps({
                "room": room,
                "listeners": own,  # this edge's own listeners
                "reported": reported,  # what the edges below it report
                "total": clamp(own + reported),
                "upstream": self.cache.breakers.state(room),
            }).encode()
            ctype = b"application/json"
        elif path.startswith("/static/") and path[8:] in self.static:
            name = path[8:]
            body = self.static[name]
            suffix = "." + name.rsplit(".", 1)[-1]
            ctype, cc = STATIC_TYPES.get(suffix, b"application/octet-stream"), b"max-age=3600"
        else:
            status, body = 404, b"not found\n"
        self.metrics.requests[("other", status)] += 1
        conn.respond(local_response(status, body, ctype, cc, close=close, head_only=head_only),
                     close)

    # -- audience ------------------------------------------------------------------------------

    def audience(self, room: str, now: float) -> int:
        """Listeners of `room` here and on every edge below this one."""
        return clamp(self.listeners.estimate(room, now) + self.children.total(room, now))

    def _report(self, room: str) -> dict[str, str]:
        """The headers of an upstream playlist request for `room` (`hls.audience`)."""
        return {EDGE_HEADER: self.settings.edge_id,
                AUDIENCE_HEADER: str(self.audience(room, self.clock()))}

    def _child_report(self, conn: EdgeProtocol, room: str, now: float) -> None:
        assert conn.child is not None
        count = conn.child_count
        report = parse_report(conn.child.decode("latin-1"),
                              count.decode("latin-1") if count is not None else None)
        if report is None:
            self.metrics.reports["malformed"] += 1
            return
        accepted = self.children.report(room, report[0], report[1], now)
        self.metrics.reports["accepted" if accepted else "dropped"] += 1

    def _audiences(self) -> dict[str, int]:
        now = self.clock()
        own = self.listeners.rooms(now)
        reported = self.children.totals(now)
        return {room: clamp(own.get(room, 0) + reported.get(room, 0))
                for room in own.keys() | reported.keys()}

    # -- housekeeping ------------------------------------------------------------------------

    async def sweep_forever(self, interval: float = 0.5) -> None:
        """Advance the coarse clock; close slow, idle or stuck connections; drop dead rooms."""
        s = self.settings
        while True:
            await asyncio.sleep(interval)
            now = self.coarse_now = self.clock()
            for conn in list(self.connections):
                if conn.headers_done is not None:
                    if now - conn.headers_done > s.edge_body_timeout:
                        conn.timeout(408)
                elif conn.began is not None:
                    if now - conn.began > s.edge_header_timeout:
                        conn.timeout(408)
                elif conn.write_paused:
                    if now - conn.write_paused_at > s.edge_send_timeout:
                        conn.timeout(0)  # a reader too slow to take even one buffer
                elif not conn.queue and now - conn.last_active > s.edge_keepalive_timeout:
                    conn.timeout(0)
            self.cache.sweep(now)

    async def aclose(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.cache.aclose()


def _load_static() -> dict[str, bytes]:
    root = resources.files("edge") / "static"
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file()}
