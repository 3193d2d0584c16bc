"""HTTP/1.1 for clients: an asyncio Protocol over httptools, with keep-alive and pipelining.

Responses leave in request order: an answer that must wait for the upstream takes a slot in the
connection's queue, and answers behind it wait in their slots until it is filled. While a
client reads slower than we write (the transport is over its high-water mark), answers wait
in their slots as references to the shared cached bytes, not as copies in the transport's
buffer, and reading from that client pauses: a slow reader costs one buffer and a queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from edge.entry import Entry, local_response
from edge.listeners import ListenerEstimate
from edge.metrics import EdgeMetrics
from edge.settings import EdgeSettings

MAX_URL = 8192
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY = 64 * 1024
# Pipelined requests queued on one connection before reading pauses.
MAX_QUEUED = 64
# Request bytes parsed for one connection per loop turn: a client that pipelines hundreds of
# requests (a flood) gets through them a slice at a time, between everyone else's.
FEED_SLICE = 2048


class ConnectionHost(Protocol):
    """What a connection needs from the application that owns it (`edge.app.EdgeApp`)."""

    settings: EdgeSettings
    metrics: EdgeMetrics
    listeners: ListenerEstimate
    connections: set[EdgeProtocol]
    clock: Callable[[], float]
    coarse_now: float
    too_many_connections: bytes

    def handle(self, conn: EdgeProtocol, url: bytes, method: bytes, close: bool) -> None: ...


class Slot:
    """A place in the connection's response order, filled when the upstream answers."""

    __slots__ = ("conn", "data", "close", "head_only", "gz", "kind", "room")

    def __init__(self, conn: EdgeProtocol, head_only: bool, gz: bool, close: bool,
                 kind: str, room: str | None) -> None:
        self.conn = conn
        self.data: bytes | None = None
        self.close = close
        self.head_only = head_only
        self.gz = gz
        self.kind = kind
        self.room = room

    def deliver(self, entry: Entry) -> None:
        conn = self.conn
        if conn.transport is None:
            return
        app = conn.app
        now = app.clock()
        self.data = entry.response(now, self.gz, self.head_only, self.close)
        app.metrics.requests[(self.kind, entry.status)] += 1
        if self.room is not None and entry.status == 200:
            app.listeners.seen(self.room, conn.client_id(), now)
        conn.flush()


class EdgeProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: ConnectionHost) -> None:
        self.app = app
        self.metrics = app.metrics
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Slot] = deque()
        self.peer = ""
        self.url = b""
        self.gz = False
        self.ua = b""
        self._client: int | None = None
        self._client_ua = b""
        # A child edge's audience report (`hls.audience` headers), raw as it came.
        self.child: bytes | None = None
        self.child_count: bytes | None = None
        self.headers = 0
        self.header_bytes = 0
        self.body_bytes = 0
        # Coarse timestamps read by the sweeper (slowloris and idle timeouts).
        self.began: float | None = None
        self.headers_done: float | None = None
        self.last_active = app.coarse_now
        self.paused = False
        self.write_paused = False
        self.write_paused_at = 0.0  # coarse time writing last paused (the sweeper's send timeout)
        self.backlog = b""  # received, not yet parsed: fed FEED_SLICE bytes per loop turn

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        app = self.app
        app.metrics.connections_total += 1
        if len(app.connections) >= app.settings.edge_max_connections:
            app.metrics.rejected["connections"] += 1
            transport.write(app.too_many_connections)  # type: ignore[attr-defined]
            transport.close()
            return
        self.transport = transport  # type: ignore[assignment]
        app.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()
        self.app.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.app.coarse_now
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is None:
            return
        self.flush()
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again unless something still holds reading back (a full queue, a slow reader,
        unparsed bytes)."""
        if (self.transport is not None and not self.paused and not self.write_paused
                and not self.backlog):
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.began is None:
            self.began = self.app.coarse_now
        if self.backlog:
            self.backlog += data  # arrived before reading paused: parsed after the rest
            return
        if len(data) > FEED_SLICE:
            self.backlog = data[FEED_SLICE:]
            data = data[:FEED_SLICE]
            if self.transport is not None:
                self.transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._feed_backlog)
        # `_feed`, written out: one Python call fewer on every request's path.
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, b"upgrades are not supported\n")
        except httptools.HttpParserError:
            self.fail(400, b"malformed request\n")

    def _feed_backlog(self) -> None:
        if self.transport is None or not self.backlog:  # closed, or failed meanwhile
            self.backlog = b""
            return
        data, self.backlog = self.backlog[:FEED_SLICE], self.backlog[FEED_SLICE:]
        self._feed(data)
        if self.backlog and self.transport is not None:
            asyncio.get_running_loop().call_soon(self._feed_backlog)
        else:
            self._resume_reading()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, b"upgrades are not supported\n")
        except httptools.HttpParserError:
            self.fail(400, b"malformed request\n")

    def fail(self, status: int, message: bytes) -> None:
        """Answer an unrecoverable request error and close once earlier answers are out."""
        self.backlog = b""  # the parser is done with this connection
        self.app.metrics.requests[("other", status)] += 1
        self.respond(local_response(status, message, close=True), True)

    def timeout(self, status: int) -> None:
        self.app.metrics.rejected["timeout"] += 1
        if self.transport is None:
            return
        if self.write_paused:
            self.transport.abort()  # close() would wait for the slow reader to take it all
            return
        if self.queue or status == 0:
            self.transport.close()
        else:
            self.fail(status, b"request timed out\n")

    # -- httptools callbacks -------------------------------------------------------------------

    # No `on_message_begin` or `on_headers_complete`: httptools calls only the callbacks a
    # protocol defines, and each is a Python call on every request's path. A message's state is
    # reset when the one before it completes, its start is noted with its first URL bytes, and
    # the body timeout runs from its first body bytes (until then the header timeout does).

    def on_url(self, url: bytes) -> None:
        if self.began is None:
            self.began = self.app.coarse_now
        self.url += url
        if len(self.url) > MAX_URL:
            raise httptools.HttpParserError("url too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        self.header_bytes += len(name) + len(value)
        if self.headers > MAX_HEADERS or self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        n = len(name)
        if n == 15:  # accept-encoding or townsquare-edge
            lowered = name.lower()
            if lowered == b"accept-encoding":
                self.gz = b"gzip" in value.lower()
            elif lowered == b"townsquare-edge":
                self.child = value
        elif n == 10 and name.lower() == b"user-agent":
            self.ua = value
        elif n == 19 and name.lower() == b"townsquare-audience":
            self.child_count = value

    def on_body(self, body: bytes) -> None:
        if self.headers_done is None:
            self.headers_done = self.app.coarse_now
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY:
            raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        self.began = None
        self.headers_done = None
        app = self.app
        self.last_active = app.coarse_now
        parser = self.parser
        url, self.url = self.url, b""
        try:
            app.handle(self, url, parser.get_method(), not parser.should_keep_alive())
        finally:  # the next message starts from nothing
            self.gz = False
            self.headers = self.header_bytes = self.body_bytes = 0
            self.child = self.child_count = None
        if self.queue and len(self.queue) > MAX_QUEUED and self.transport is not None \
                and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    # -- writing -------------------------------------------------------------------------------

    def client_id(self) -> int:
        if self._client is None or self.ua is not self._client_ua:
            self._client_ua = self.ua
            self._client = hash((self.peer, self.ua))
        return self._client

    def respond(self, data: bytes, close: bool) -> None:
        """Send an answer that is ready now, after any still-pending earlier answers."""
        if self.queue or self.write_paused:
            slot = Slot(self, False, False, close, "other", None)
            slot.data = data
            self.queue.append(slot)
            return
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        self.metrics.bytes_out += len(data)
        if close:
            transport.close()

    def defer(self, head_only: bool, close: bool, kind: str, room: str | None) -> Slot:
        slot = Slot(self, head_only, self.gz, close, kind, room)
        self.queue.append(slot)
        return slot

    def flush(self) -> None:
        queue = self.queue
        transport = self.transport
        while queue and queue[0].data is not None and transport is not None \
                and not self.write_paused:
            slot = queue.popleft()
            data = slot.data
            assert data is not None
            transport.write(data)
            self.metrics.bytes_out += len(data)
            if slot.close:
                queue.clear()
                transport.close()
                return
        if self.paused and len(queue) <= MAX_QUEUED // 2:
            self.paused = False
            self._resume_reading()
        self.last_active = self.app.coarse_now
