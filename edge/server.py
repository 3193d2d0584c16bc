"""Running the edge: `run` inside an event loop, `serve` as a blocking process entry point.

The edge speaks HTTP/1.1 only (keep-alive, pipelining). LL-HLS asks for HTTP/2 towards players:
put a load balancer or CDN that terminates HTTP/2 (and TLS) in front of the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from edge.app import EdgeApp
from edge.protocol import EdgeProtocol
from edge.settings import EdgeSettings

log = logging.getLogger("townsquare.edge")
# One line per upstream request is noise at edge scale; failures show in /metrics.
logging.getLogger("httpx").setLevel(logging.WARNING)


async def run(settings: EdgeSettings, started: asyncio.Event | None = None) -> None:
    """Serve until cancelled; set `started` once the listening socket accepts connections."""
    loop = asyncio.get_running_loop()
    app = EdgeApp(settings)
    server = await loop.create_server(
        lambda: EdgeProtocol(app),
        host=settings.host,
        port=settings.edge_port,
        reuse_address=True,
        backlog=4096,
    )
    for sock in server.sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sweeper = loop.create_task(app.sweep_forever())
    log.info("edge on http://%s:%d → %s", settings.host, settings.edge_port,
             settings.edge_upstream)
    if started is not None:
        started.set()
    try:
        await asyncio.Future()
    finally:
        sweeper.cancel()
        server.close()
        await app.aclose()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)


def serve(settings: EdgeSettings) -> None:
    """Run the edge until SIGINT or SIGTERM (uvloop when available)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        loop = runner.get_loop()
        main = loop.create_task(run(settings))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            runner.run(_wait(main))


async def _wait(task: asyncio.Task[None]) -> None:
    await task
