"""Stopping the RTMP listener ends every session, and never waits for ever on one."""

from __future__ import annotations

import asyncio

from ingest.metrics import IngestMetrics
from ingest.rooms import RoomPolicy, Rooms
from ingest.rtmp.server import RtmpServer
from tests.ingest.twins import RecordingPackager


async def test_stop_ends_sessions_and_returns_even_when_one_ignores_its_cancellation() -> None:
    metrics = IngestMetrics()
    server = RtmpServer(Rooms(RecordingPackager(), None, metrics, RoomPolicy()), metrics,
                        "127.0.0.1", 0)
    await server.start()
    # A real client that connects and says nothing: its session waits for the handshake.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(50):
        if server.connections:
            break
        await asyncio.sleep(0.02)
    assert server.connections == 1
    # A session that swallows its cancellation (as asyncio.wait_for could on Python 3.11
    # when a read completed in the same turn as the cancel) stood for by a task that does.
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    server._tasks.add(task)
    try:
        await asyncio.wait_for(server.stop(), 15)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the quiet client was let go
    finally:
        release.set()
        await task
        writer.close()
