"""The RTMP listener: one port, many publishers, each connection its own session task."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ingest.metrics import IngestMetrics
from ingest.rooms import Rooms
from ingest.rtmp.chunk import Limits
from ingest.rtmp.session import RtmpSession

log = logging.getLogger("townsquare.ingest.rtmp")


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
    ) -> None:
        self._rooms, self._metrics = rooms, metrics
        self.host, self.port = host, port
        self.max_connections = max_connections
        self._limits = limits or Limits()
        self._handshake_timeout, self._idle_timeout = handshake_timeout, idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("RTMP listening on rtmp://%s:%d/live/{stream key}", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        return len(self._tasks)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            self._metrics.rtmp_connections.labels(outcome="over_limit").inc()
            log.warning("RTMP: %d connections already; refusing one", len(self._tasks))
            writer.close()
            return
        session = RtmpSession(
            reader, writer, self._rooms, self._metrics, self._limits,
            self._handshake_timeout, self._idle_timeout,
        )
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await session.run()
        except asyncio.CancelledError:
            # stop() cancels sessions; end this handler normally, or asyncio's stream
            # callback logs the cancellation as an error for every open connection.
            pass
        finally:
            self._tasks.discard(task)
