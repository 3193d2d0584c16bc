"""ASGI apps served by uvicorn inside a loop that also runs other servers; signals are left
to the process (`serving.runner`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn


# How often a server's loop looks at itself when nothing wakes it: its `Date` header has a
# second's resolution.
TICK_SECONDS = 1.0


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process, and wakes the
    event loop once a second instead of ten times.

    uvicorn's own loop sleeps 0.1 s at a time to notice `should_exit` and refreshes its
    `Date` header every tenth time. In an ingest process with one room those ticks, two
    servers' worth, were twenty of the loop's fifty to eighty wake-ups a second, each
    costing more than the work in it (`docs/performance.md`). Here the loop ticks once a second, which is as often as the
    header changes, and `should_exit` wakes it at once, so stopping is as quick as before."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        # `on_tick(counter)` refreshes the Date header when `counter % 10 == 0`: every tick.
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self._exit.wait()


# How long a stopping server waits for requests in flight: long-lived ones (a relay from
# another node, a held blocking request) must not hold a shutdown past what an orchestrator
# allows.
GRACE_SECONDS = 5


def http_server(app: Any, host: str, port: int) -> QuietServer:
    # log_config=None: uvicorn's warnings go through the process's own handler (plain text
    # or JSON lines, `serving.logs`) instead of a format of its own.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            access_log=False, timeout_keep_alive=30, server_header=False,
                            log_config=None, timeout_graceful_shutdown=GRACE_SECONDS)
    return QuietServer(config)


async def serve_http(server: QuietServer, started: asyncio.Event | None = None) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # raises the bind error, if any
        raise RuntimeError(f"server on port {server.config.port} stopped at start")
    if started is not None:
        started.set()
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
