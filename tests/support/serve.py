"""An ASGI app served on a free local port for the length of a `with` block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from serving.http import http_server, serve_http
from tests.support.procs import free_port


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Yield the app's base URL; the server stops when the block ends."""
    port = free_port()
    started = asyncio.Event()
    task = asyncio.create_task(serve_http(http_server(app, "127.0.0.1", port), started))
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
