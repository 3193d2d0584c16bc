"""The RTMP listener: one port (and optionally an RTMPS port), many publishers, each
connection its own session task.

Connections are counted before anything is read: past `max_connections` in all, or past
`max_per_address` from one remote address, a new one is closed on accept (RTMP has no way
to say why before its handshake; the log line and `townsquare_ingest_limit_hits` do). Both
ports share the counts. RTMPS is plain RTMP inside TLS; asyncio bounds the TLS handshake by
the same handshake deadline, before the connection is counted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from ingest.limits import AddressCounts, RtmpLimits, rtmp_limits, tls_context
from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.rtmp.chunk import Limits
from ingest.rtmp.session import RtmpSession
from ingest.settings import IngestSettings

log = logging.getLogger("townsquare.ingest.rtmp")
# A flood of refused connections logs one line a second, with how many were refused.
_REFUSAL_LOG_SECONDS = 1.0
_STOP_SECONDS = 3.0  # each: sessions ending, then the listeners closing


class RtmpServer:
    def __init__(
        self,
        rooms: Rooms,
        metrics: IngestMetrics,
        host: str,
        port: int,
        max_connections: int = 256,
        limits: Limits | None = None,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        *,
        policy: RtmpLimits | None = None,
        tls_port: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._rooms, self._metrics = rooms, metrics
        self.host, self.port = host, port
        if policy is None:
            policy = RtmpLimits(handshake_seconds=handshake_timeout, idle_seconds=idle_timeout,
                                max_connections=max_connections, chunk=limits or Limits())
        self.limits = policy
        self.tls_port = tls_port if tls is not None else None
        self._tls = tls
        self._per_address = AddressCounts(policy.max_per_address)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused = 0
        self._refusal_logged = 0.0

    @classmethod
    def from_settings(cls, rooms: Rooms, metrics: IngestMetrics,
                      settings: IngestSettings) -> RtmpServer:
        """The server the settings describe (RTMPS too when `rtmps_port` is set);
        ConfigError when a limit or the certificate cannot work."""
        tls = None
        if settings.rtmps_port is not None:
            tls = tls_context(settings.rtmps_cert, settings.rtmps_key)
        return cls(rooms, metrics, settings.host, settings.rtmp_port,
                   policy=rtmp_limits(settings), tls_port=settings.rtmps_port, tls=tls)

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    async def start(self) -> None:
        plain = await asyncio.start_server(self._accept_plain, self.host, self.port)
        self._servers.append(plain)
        self.port = int(plain.sockets[0].getsockname()[1])
        log.info("RTMP listening on rtmp://%s:%d/live/{stream key}", self.host, self.port)
        if self._tls is not None and self.tls_port is not None:
            try:
                secure = await asyncio.start_server(
                    self._accept_tls, self.host, self.tls_port, ssl=self._tls,
                    ssl_handshake_timeout=self.limits.handshake_seconds)
            except OSError:
                await self.stop()
                raise
            self._servers.append(secure)
            self.tls_port = int(secure.sockets[0].getsockname()[1])
            log.info("RTMPS listening on rtmps://%s:%d/live/{stream key}", self.host,
                     self.tls_port)

    async def stop(self) -> None:
        """Stop listening and end every session, within `_STOP_SECONDS` each way: a session
        that ignores its cancellation must not hold a node's shutdown (and the hand-over of
        its rooms) for ever."""
        for server in self._servers:
            server.close()
        sessions = list(self._tasks)
        for task in sessions:
            task.cancel()
        if sessions:
            done, stuck = await asyncio.wait(sessions, timeout=_STOP_SECONDS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: ended by its error, nothing left to do
            if stuck:
                log.warning("RTMP: %d sessions still running %.0f s after being stopped; "
                            "left behind", len(stuck), _STOP_SECONDS)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), _STOP_SECONDS)
            except TimeoutError:
                log.warning("RTMP: the listener did not close within %.0f s", _STOP_SECONDS)
        self._servers = []

    @property
    def connections(self) -> int:
        return len(self._tasks)

    async def _accept_plain(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "rtmp")

    async def _accept_tls(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "rtmps")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      transport: str) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if len(self._tasks) >= self.limits.max_connections:
            self._refuse(writer, "rtmp_connections", "over_limit",
                         f"{len(self._tasks)} connections already (rtmp_max_connections)")
            return
        if not self._per_address.acquire(address):
            self._refuse(writer, "rtmp_connections_per_address", "over_address_limit",
                         f"{address} has {self._per_address.count(address)} connections "
                         "already (rtmp_max_connections_per_address)")
            return
        session = RtmpSession(reader, writer, self._rooms, self._metrics, self.limits)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        gauge = self._metrics.rtmp_open.labels(transport=transport)
        gauge.inc()
        try:
            await session.run()
        except asyncio.CancelledError:
            # stop() cancels sessions; end this handler normally, or asyncio's stream
            # callback logs the cancellation as an error for every open connection.
            pass
        finally:
            gauge.dec()
            self._per_address.release(address)
            self._tasks.discard(task)

    def _refuse(self, writer: asyncio.StreamWriter, limit: str, outcome: str,
                why: str) -> None:
        self._metrics.rtmp_connections.labels(outcome=outcome).inc()
        self._metrics.limit_hits.labels(limit=limit).inc()
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= _REFUSAL_LOG_SECONDS:
            log.warning("RTMP: refusing a connection: %s (%d refused since the last line)",
                        why, self._refused)
            self._refused, self._refusal_logged = 0, now
        writer.close()
