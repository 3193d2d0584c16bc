"""Running the edge: `run` inside an event loop, `serve` as a blocking process entry point.

The edge speaks HTTP/1.1 only (keep-alive, pipelining). LL-HLS asks for HTTP/2 towards players:
put a load balancer or CDN that terminates HTTP/2 (and TLS) in front of the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from edge.app import EdgeApp
from edge.protocol import EdgeProtocol
from edge.settings import EdgeSettings
from serving.runner import run_until_signalled
from serving.tasks import cancel_and_wait

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
    run_until_signalled(lambda stop: _serve_until(settings, stop))


async def _serve_until(settings: EdgeSettings, stop: asyncio.Event) -> None:
    edge = asyncio.create_task(run(settings))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([edge, waiter], return_when=asyncio.FIRST_COMPLETED)
    if edge.done():
        waiter.cancel()
        edge.result()  # a start-up error (the port is taken) ends the process with it
        return
    await cancel_and_wait(edge)
