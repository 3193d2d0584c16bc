"""The presence writer stops when told to, whatever its write to the registry is doing: a
node's shutdown waits for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY

from ingest.metrics import IngestMetrics
from ingest.presence import PresenceWriter
from ingest.rooms import Rooms
from packager.audience import AudienceBoard
from registry import Registry, default_url
from tests.ingest.twins import RecordingPackager


def written() -> float:
    return REGISTRY.get_sample_value("townsquare_ingest_presence_writes_total",
                                     {"outcome": "written"}) or 0.0


async def test_the_presence_writer_stops_at_any_moment_of_a_write(tmp_path: Path) -> None:
    registry = await Registry.open(default_url(tmp_path))
    rooms = Rooms(RecordingPackager(), registry, IngestMetrics())
    board = AudienceBoard()
    try:
        room, _ = await rooms.create("hall")
        rooms.join(room, "local", "test", name="Ada")
        await rooms.ledger.flush(10)
        # Stopped at moments from the start of a write to its end, over and over: under
        # Python 3.11 `asyncio.wait_for` drops a cancellation that comes in the turn its call
        # finishes, and the writer then wrote on for ever (3 of 3 runs of this test hung on
        # that code; 1 of 3 with half as many rounds).
        for offset in range(400):
            board.report("hall", "edge-1", offset + 1, time.time())  # a new figure to write
            writer = PresenceWriter(rooms, registry, board, every=0.02)
            writer.start()
            await asyncio.sleep(0.02 + offset % 100 * 0.00005)  # 0 to 5 ms into a write
            await asyncio.wait_for(writer.stop(), 5.0)
        assert written() > 0
    finally:
        await rooms.close()
        await registry.close()
